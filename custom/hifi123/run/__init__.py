"""`hifi123 run`: one command from a photo to an asset.

plan.py      the stage table and the pure stage planner (method, options, outputs tree) -> stages
runner.py    executes a plan: subprocesses, logs, completion markers, resume, run records
manifest.py  many images on many GPUs: manifest, deterministic sharding, workers, summary
export.py    GLB from threestudio's OBJ/MTL, coloured PLY of Make-It-3D's point cloud
cli.py       `add_parser(subparsers)` for the `hifi123` command; `python -m hifi123.run.cli`
"""
