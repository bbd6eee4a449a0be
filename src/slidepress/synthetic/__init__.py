"""Synthetic data generators: images, grids and slides whose ground truth is known by design.

They feed the benchmarks (benchmarks/) and the tests, never the pipeline, which is why they
live apart from `bench/` (which measures codecs) and import nothing from it. Each module
draws one kind of data:

- `mosaic`: "slides" of real PatchCamelyon patches in an irregular tissue mask, with one
  contiguous tumour region in positives (slide-level NIC benchmarks, a toy survival endpoint);
- `pcam`: the PCam patch tables those mosaics draw from, and their cached encoder codes;
- `digits`: the synthetic digit canvases of the NIC paper (Tellez et al., TPAMI 2019, 4.1.1);
- `slides`: small pyramidal TIFF files (tiled JPEG / deflate pages, 2x pyramid, resolution
  tags) and a tissue-like texture to fill them, so reader and tiling tests run without
  downloaded slides;
- `stress_tiles`: tiles a codec trained on H&E never saw (DAB-like IHC, flat, noise, dark
  fluorescence-like) and JPEG-XL's bytes at equal pooled PSNR (the learned codec's guard).

Import the module you need (`from slidepress.synthetic import mosaic`); nothing is imported
here, so `import slidepress` stays light.
"""
