"""Autoencoders as tile compressors (PathAE, Yellapragada et al. MICCAI 2025): a pre-trained
autoencoder's latents, quantized and entropy coded, are the stored bytes.

One concept per module: `model.py` (slidepress's own compact H&E autoencoder), `loading.py`
(weights bundles: the own model or diffusers `AutoencoderKL` / `AutoencoderDC` through
`from_pretrained`, and the weights hash), `quantize.py` (per-channel int8 and K-means vector
quantization, entropy coded with constriction), `codec.py` (the registry codecs: quality =
rate level, batched), `export.py` (a bundle with a fine-tuned decoder; the fine-tuning itself
is `slidepress.training.ae_decoder`). Nothing here is imported until a codec is used: torch and
diffusers load on first use.
"""
