"""One module of routes per resource: meta (health, me, options), uploads (+ resumable
uploads), jobs, results,
deepzoom (viewer tiles of uploads and results)."""

from . import deepzoom, jobs, meta, results, resumable, uploads

ROUTERS = (
    meta.router,
    resumable.router,
    uploads.router,
    jobs.router,
    results.router,
    deepzoom.router,
)
