"""The HTTP API: routes by resource (`routes/`), their dependencies (`deps.py`) and response
models (`models.py`); `service/app.py` assembles them into the FastAPI app."""
