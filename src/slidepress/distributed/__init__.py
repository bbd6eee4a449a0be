"""Whole archives on Dask: the pipeline's batch runner over a cluster, resumable and
fault-tolerant, with a report (docs/DISTRIBUTED.md).

`manifest` finds the slides (a folder or a CSV), `runner` builds the dynamic task graph on a
LocalCluster or an existing scheduler, `tasks` is what workers run (`pipeline.batch.run_slide`
on plain data), `regions` splits a huge slide's encoding or compression into bands and
merges them into the single output a whole-slide run writes, `report` writes report.csv,
report.md and the plot.
Dask is imported only when a run starts.
"""
