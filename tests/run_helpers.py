"""Shared by the `hifi123 run` tests: a fake threestudio root (a launch.py stub and our config
names), option and output-tree builders, a fake stage executor, GPU fixtures, the CLI runner."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
from hifi123.run import cli as run_cli
from hifi123.run import plan as pl
from hifi123.sample import make_sample as ms
from PIL import Image

SAMPLE = str(ms.DEFAULT_ASSETS_DIR / "sample_rgba.png")
PY = sys.executable
ALIGNED_ELEVATION = 12.5  # the elevation the fake align stage "fits"


def pl_sha256(path):
    from hifi123.preprocess.pipeline import file_sha256

    return file_sha256(path)


# ------------------------------------------------------------------------------------ helpers


def tree_sha256(folder) -> dict:
    """{relative path: sha256} of every file below `folder` (proves nothing was written there)."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def fake_threestudio(tmp_path, configs=True, link=True):
    root = tmp_path / "threestudio"
    root.mkdir(parents=True)
    (root / "launch.py").write_text(
        "raise SystemExit('launch.py stub: never run by these tests')\n"
    )
    if link:
        cdir = root / "custom" / "hifi123" / "configs"
        cdir.mkdir(parents=True)
        if configs:
            for spec in pl.METHODS.values():
                for stages in spec.stages.values():
                    for ts in stages.values():
                        (cdir / ts.config).write_text("name: x\n")
    return str(root)


def make_opts(tmp_path, method="hifi123", **kw):
    root = kw.pop("threestudio_root", None) or fake_threestudio(tmp_path)
    image = kw.pop("image", None)
    if image is None:
        image = str(tmp_path / "photos" / "cat.png")
        os.makedirs(os.path.dirname(image), exist_ok=True)
        Image.open(SAMPLE).save(image)
    return pl.RunOptions(
        image=image,
        method=method,
        out=str(tmp_path / "out"),
        threestudio_root=root,
        python=PY,
        **kw,
    )


def touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def trial(opts, stage):
    return pl.Layout.of(opts).trial(opts.training(stage).name)


def make_done(opts, *stages, crashed=()):
    """Write the completion evidence of `stages` (and a checkpoint without marker for `crashed`)."""
    lay = pl.Layout.of(opts)
    for st in stages:
        if st == "preprocess":
            for p in lay.preprocessed_files:
                touch(p, "a red cup" if p.endswith("_caption.txt") else "x")
        elif st == "align":  # what `hifi123 align-mesh` writes (alignment.json: its record)
            for name in pl.ALIGNED_FILES[::2]:
                touch(lay.aligned(name))
            sha = pl_sha256(opts.mesh) if opts.mesh and os.path.isfile(opts.mesh) else None
            record = {
                "mesh": opts.mesh,
                "mesh_sha256": sha,
                "pose_option": opts.pose,
                "silhouette_iou": 0.97,
                "matrix": [[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0.1]],
                "reference_camera": {
                    "elevation_deg": ALIGNED_ELEVATION,
                    "azimuth_deg": 0.0,
                    "distance": 3.8,
                    "fovy_deg": 20.0,
                },
            }
            touch(lay.aligned("alignment.json"), json.dumps(record))
        elif st in pl.TRAINING_STAGES:
            t = trial(opts, st)
            for rel in ("ckpts/last.ckpt", "configs/parsed.yaml", pl.MARKER):
                touch(os.path.join(t, rel))
        elif st == "export":
            touch(os.path.join(trial(opts, opts.spec.mesh_from), "save/it100-export/model.obj"))
        elif st == "glb":
            touch(os.path.join(trial(opts, opts.spec.mesh_from), "save/it100-export/model.glb"))
        elif st == "ply":
            touch(os.path.join(trial(opts, "refine"), pl.POINTCLOUD))
        elif st == "video":
            touch(os.path.join(trial(opts, "refine"), "save/it100-test.mp4"))
        elif st == "eval":
            touch(
                os.path.join(trial(opts, "refine"), pl.EVAL_REPORT),
                json.dumps({"metrics": {"lpips_ref": 0.08, "contextual": 1.6, "clip": 0.91}}),
            )
    for st in crashed:
        touch(os.path.join(trial(opts, st), "ckpts/last.ckpt"))


def plan_now(opts, ran=()):
    return {s.name: s for s in pl.plan_stages(opts, pl.scan_state(opts), ran)}


def runs(stages):
    return [n for n, s in stages.items() if s.runs]


class FakeExecutor:
    """Stands in for subprocesses: writes what each stage's real command writes. `fail` maps a
    stage name, or (tag, stage), to (exit code, log text, write a checkpoint first)."""

    def __init__(self, *opts, fail=None):
        self.opts = {o.run_tag: o for o in opts}
        self.fail = fail or {}
        self.calls = []

    def __call__(self, stage, echo):
        self.calls.append(stage)
        os.makedirs(os.path.dirname(stage.log), exist_ok=True)
        tag = os.path.basename(os.path.dirname(stage.log))  # OUT/logs/TAG/<stage>.log
        opts = self.opts[tag]
        failure = self.fail.get((tag, stage.name)) or self.fail.get(stage.name)
        if failure:
            code, text, ckpt = failure
            with open(stage.log, "a") as f:
                f.write(text)
            if ckpt:
                touch(os.path.join(stage.trial, "ckpts/last.ckpt"))
            return code
        with open(stage.log, "a") as f:
            f.write(f"{stage.name} ok\n")
        if stage.name in pl.TRAINING_STAGES:
            for rel in ("ckpts/last.ckpt", "configs/parsed.yaml"):
                touch(os.path.join(stage.trial, rel))
            if stage.name == "refine":  # launch.py --train ends with the test pass
                touch(os.path.join(stage.trial, "save/it100-test.mp4"))
        else:
            make_done(opts, stage.name)
        return 0


class CountingExecutor(FakeExecutor):
    """FakeExecutor for stages run in other processes (Slurm tasks): each call is appended to
    `OUT/calls.jsonl` (tag, stage, resume checkpoint, pid) instead of kept in memory. `hang`:
    (tag, stage) pairs whose first call writes a checkpoint, touches `OUT/hanging-<tag>-<stage>`
    and sleeps until killed (at most `hang_seconds`, then it fails)."""

    def __init__(self, *opts, fail=None, hang=(), hang_seconds=120):
        super().__init__(*opts, fail=fail)
        self.hang = set(hang)
        self.hang_seconds = hang_seconds

    def __setstate__(self, state):
        # unpickled in a Slurm task: no GPU there, and no stage needs one (as `gpu` in conftest)
        self.__dict__.update(state)
        from hifi123.run import runner

        runner.gpu_available = lambda: True

    @staticmethod
    def calls_of(out):
        path = os.path.join(out, "calls.jsonl")
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def __call__(self, stage, echo):
        tag = os.path.basename(os.path.dirname(stage.log))
        out = self.opts[tag].out
        earlier = [c for c in self.calls_of(out) if (c["tag"], c["stage"]) == (tag, stage.name)]
        with open(os.path.join(out, "calls.jsonl"), "a") as f:
            call = {"tag": tag, "stage": stage.name, "resume": stage.resume, "pid": os.getpid()}
            f.write(json.dumps(call) + "\n")
        if (tag, stage.name) in self.hang and not earlier:
            touch(os.path.join(stage.trial, "ckpts/last.ckpt"))  # a checkpoint mid-training
            touch(os.path.join(out, f"hanging-{tag}-{stage.name}"), str(os.getpid()))
            deadline = time.time() + self.hang_seconds
            while time.time() < deadline:
                time.sleep(0.2)
            return 1
        return super().__call__(stage, echo)


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _printed_commands(text):
    cmds = []
    for line in text.splitlines():
        if line.startswith("    cd "):
            words = shlex.split(line.strip())
            cwd = words[1]
            assert words[2] == "&&"
            rest = words[3:]
            env = {}
            while rest and "=" in rest[0] and not rest[0].startswith("/"):
                k, v = rest.pop(0).split("=", 1)
                env[k] = v
            cmds.append((cwd, env, rest))
    return cmds


def write_manifest(tmp_path, names, extra=""):
    d = tmp_path / "photos"
    d.mkdir(exist_ok=True)
    for n in names:
        if not (d / n).exists():
            Image.open(SAMPLE).resize((64, 64)).save(d / n)
    p = tmp_path / "images.txt"
    p.write_text("# my photos\n\n" + "\n".join(f"photos/{n}" for n in names) + "\n" + extra)
    return str(p)


def train_argv(config, *overrides):
    """The launch.py command `hifi123 run` plans for a training stage on GPU 0."""
    return [
        PY,
        "launch.py",
        "--config",
        f"custom/hifi123/configs/{config}",
        "--train",
        "--gpu",
        "0",
        *overrides,
    ]


def manifest_run(tmp_path, names):
    """A manifest of `names` (copies of the sample) and the run options every image starts from
    (outputs under tmp_path/out, a fake threestudio root): (manifest path, base options)."""
    from hifi123.run import plan

    root = fake_threestudio(tmp_path)
    base = plan.RunOptions(image="", out=str(tmp_path / "out"), threestudio_root=root, python=PY)
    return write_manifest(tmp_path, names), base


#: an executor `fail=` entry: the image tagged "bad" is refused by preprocessing
BAD_IMAGE = {("bad", "preprocess"): (2, "hifi123: error: bad.png is empty\n", False)}


def write_textured_box(folder, size=48):
    """A unit box as threestudio's mesh exporter writes it: model.obj (`mtllib`, `usemtl`,
    `vt u 1-v`, `f v/vt/` corners), model.mtl with map_Kd, texture_kd.jpg (the synthetic sample).
    Each face has its own UV island, so positions are shared and UVs are not (seams)."""
    os.makedirs(folder, exist_ok=True)
    Image.open(SAMPLE).convert("RGB").resize((size, size)).save(
        os.path.join(folder, "texture_kd.jpg"), quality=90
    )
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces, uv, ftex = [], [], []
    for q, quad in enumerate(quads):
        u0, v0 = (q % 3) / 3.0, (q // 3) / 2.0
        base = len(uv)
        uv += [
            [u0 + 0.02, v0 + 0.02],
            [u0 + 0.31, v0 + 0.02],
            [u0 + 0.31, v0 + 0.48],
            [u0 + 0.02, v0 + 0.48],
        ]
        faces += [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        ftex += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    uv = np.array(uv)
    lines = ["mtllib model.mtl", "g object", "usemtl default"]
    lines += [f"v {a} {b} {c}" for a, b, c in v]
    lines += [f"vt {a} {1.0 - b}" for a, b in uv]
    lines += [
        "f " + " ".join(f"{p + 1}/{t + 1}/" for p, t in zip(f, ft)) for f, ft in zip(faces, ftex)
    ]
    with open(os.path.join(folder, "model.obj"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "model.mtl"), "w") as f:
        f.write("newmtl default\nKa 0.0 0.0 0.0\nmap_Kd texture_kd.jpg\nKs 0.0 0.0 0.0\n")
    corners_pos = v[np.array(faces)]  # [F, 3, 3]
    corners_uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1)[np.array(ftex)]  # as written in the file
    return os.path.join(folder, "model.obj"), corners_pos, corners_uv
