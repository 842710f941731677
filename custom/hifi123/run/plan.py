"""The stage plan of `hifi123 run`: a pure function of (method, options, outputs tree state).

    scan_state(layout)               reads the outputs tree (the only I/O in this module)
    plan_stages(opts, state, ran)    -> [Stage, ...] in order; `Stage.skip` says why one does not
                                     run

Stages, in order (`ply` only for Make-It-3D; `align` instead of `coarse` for refine-mesh):

    preprocess  python -m hifi123.cli preprocess IMAGE --out OUT/preprocessed/TAG
    align       python -m hifi123.cli align-mesh MESH --ref <rgba> --out OUT/aligned/TAG --overwrite
    coarse      python launch.py --config custom/hifi123/configs/<coarse>.yaml --train --gpu G ...
    refine      python launch.py --config .../<refine>.yaml --train ...
                system.geometry_convert_from=<coarse>/ckpts/last.ckpt
                (refine-mesh: system.geometry.shape_init=mesh:<aligned mesh>, the fitted elevation)
    export      python launch.py --config <trial>/configs/parsed.yaml --export ...
                system.exporter_type=mesh-exporter
    glb         python -m hifi123.run.export glb <trial>           (next to model.obj)
    ply         python -m hifi123.run.export ply <refine>/ckpts/last.ckpt --out
                <refine>/save/pointcloud.ply
    video       python launch.py --config <refine>/configs/parsed.yaml --test ...   (normally
                already
                made by the refine run's own test pass, so skipped)
    eval        python -m hifi123.cli eval single-view --ref RGBA --views <refine> --out
                <refine>/save/eval/single_view.json

Layout (deterministic, so a re-run finds everything; threestudio's own `<name>/<tag>` layout with
`use_timestamp=false`):

    OUT/preprocessed/TAG/<name>_rgba.png, _depth.png, _normal.png, _caption.txt, _preprocess.json
    OUT/aligned/TAG/aligned_mesh.ply, alignment.json, alignment_overlay.png   (refine-mesh)
    OUT/<run name>/TAG/{ckpts,configs,save,...}     one threestudio trial per training stage
    OUT/logs/TAG/<variant>-<stage>.log               what each stage printed
    OUT/runs/TAG.<variant>.json                      the run record (stage timings, outputs,
                                                     metrics)

Completion evidence ("done"):
    preprocess  the RGBA, depth, normal and caption files and the `_preprocess.json` sidecar (the
                preprocessor writes the sidecar last)
    training    `<trial>/hifi123_stage.json` (written by the runner after launch.py exits 0 and the
                trial has `ckpts/last.ckpt` and `configs/parsed.yaml`) plus `ckpts/last.ckpt`.
                A `last.ckpt` without the marker is an interrupted run: it resumes with `resume=`.
    align       its three files, made from the same --mesh (content hash) and --pose
    others      their output files (each is written last or atomically by its writer)
A stage also runs when a stage it depends on runs (or ran earlier in this invocation: `ran`); a
training stage forced that way starts fresh, and the runner moves its old trial folder aside.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

# ------------------------------------------------------------------------------- stage table

#: where our configs live, relative to the threestudio root (install.sh links custom/hifi123 there)
CONFIG_DIR = "custom/hifi123/configs"

MARKER = "hifi123_stage.json"
EVAL_REPORT = os.path.join("save", "eval", "single_view.json")
POINTCLOUD = os.path.join("save", "pointcloud.ply")


@dataclass(frozen=True)
class TrainingStage:
    config: str  # file in custom/hifi123/configs/
    name: str  # threestudio `name=`: the trials go to OUT/<name>/<tag>/


@dataclass(frozen=True)
class MethodSpec:
    """One method's row of the stage table."""

    stages: Dict[bool, Dict[str, TrainingStage]]  # lowvram -> {"coarse": ..., "refine": ...}
    chain_key: str  # refine override that points at the coarse checkpoint
    # override that receives the caption (None: the config reads <name>_caption.txt)
    prompt_key: Optional[str]
    mesh_from: str  # the training stage whose geometry the mesh exporter exports
    pointcloud: bool  # Make-It-3D: a coloured PLY of the refine stage's point cloud
    aligns_mesh: bool = False  # refine-mesh: the user's --mesh, aligned, replaces the coarse stage


def _ts(config: str) -> TrainingStage:
    return TrainingStage(config, os.path.splitext(config)[0])


#: THE stage table: adjust config files and run names here, nowhere else.
METHODS: Dict[str, MethodSpec] = {
    "hifi123": MethodSpec(
        stages={
            False: {
                "coarse": TrainingStage("coarse.yaml", "hifi123-coarse"),
                "refine": TrainingStage("refine.yaml", "hifi123-refine"),
            },
            True: {
                "coarse": TrainingStage("coarse-lowvram.yaml", "hifi123-coarse-lowvram"),
                "refine": TrainingStage("refine-lowvram.yaml", "hifi123-refine-lowvram"),
            },
        },
        chain_key="system.geometry_convert_from",
        prompt_key=None,  # an empty prompt in coarse/refine.yaml reads <name>_caption.txt
        mesh_from="refine",  # the refined DMTet mesh
        pointcloud=False,
    ),
    "makeit3d": MethodSpec(
        stages={
            False: {"coarse": _ts("makeit3d-coarse.yaml"), "refine": _ts("makeit3d-refine.yaml")},
            True: {
                "coarse": _ts("makeit3d-coarse-lowvram.yaml"),
                "refine": _ts("makeit3d-refine-lowvram.yaml"),
            },
        },
        chain_key="system.geometry_convert_from",
        prompt_key=None,  # makeit3d-guidance reads <name>_caption.txt next to data.image_path
        # the refine stage is a point cloud: the mesh comes from the coarse NeRF
        mesh_from="coarse",
        pointcloud=True,
    ),
    "refine-mesh": MethodSpec(  # HiFi-123's refine on a mesh the user has (decision 31)
        stages={
            False: {"refine": TrainingStage("refine-mesh.yaml", "hifi123-refine-mesh")},
            True: {
                "refine": TrainingStage("refine-mesh-lowvram.yaml", "hifi123-refine-mesh-lowvram")
            },
        },
        chain_key="system.geometry.shape_init",  # mesh:<OUT/aligned/TAG/aligned_mesh.ply>
        prompt_key=None,  # refine-mesh.yaml's RGSD reads <name>_caption.txt
        mesh_from="refine",  # the frozen mesh with the refined texture
        pointcloud=False,
        aligns_mesh=True,
    ),
}

#: stage order and what each one needs
STAGE_ORDER = ("preprocess", "align", "coarse", "refine", "export", "glb", "ply", "video", "eval")
TRAINING_STAGES = ("coarse", "refine")
#: stages `--set STAGE:KEY=VALUE` may address (launch.py stages)
OVERRIDABLE = ("coarse", "refine", "export", "video")

CAPTION_PLACEHOLDER = "<the caption in {path}>"
ALIGNMENT_PLACEHOLDER = "<the elevation_deg fitted in {path}>"
ALIGNED_FILES = ("aligned_mesh.ply", "alignment.json", "alignment_overlay.png")  # core.mesh_align


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RunOptions:
    image: str  # absolute path of the input photo
    method: str = "hifi123"
    out: str = "outputs"  # absolute after `normalized()`
    gpu: str = "0"  # launch.py --gpu: "0" or "0,1" (DDP inside one object)
    lowvram: bool = False
    threestudio_root: str = ""
    python: str = "python"
    prompt: Optional[str] = None  # instead of the BLIP-2 caption
    overrides: Tuple[
        Tuple[Optional[str], str], ...
    ] = ()  # (stage or None = both training stages, "key=value")
    tag: Optional[str] = None  # default: sanitized image name
    mesh: Optional[str] = None  # refine-mesh: the user's mesh (absolute path)
    pose: Optional[str] = None  # refine-mesh: `hifi123 align-mesh --pose` (by hand)

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    @property
    def training_stages(self) -> Tuple[str, ...]:
        """This method's training stages, in order."""
        return tuple(st for st in TRAINING_STAGES if st in self.spec.stages[self.lowvram])

    @property
    def variant(self) -> str:
        return self.method + ("-lowvram" if self.lowvram else "")

    @property
    def run_tag(self) -> str:
        return self.tag or make_tag(self.image)

    def training(self, stage: str) -> TrainingStage:
        return self.spec.stages[self.lowvram][stage]


def output_name(path: str) -> str:
    """The preprocessor's output name (`photo.jpg` -> `photo`, `cat_rgba.png` -> `cat`)."""
    from ..preprocess.inputs import output_name as _output_name

    return _output_name(path)


def make_tag(image: str) -> str:
    """A threestudio tag from the image name: letters, digits, `.`, `_`, `-` only. A name that
    loses characters on the way (`猫.png`, `café.jpg`) gets a short hash of the whole name, so
    two such names never share one tag (and one set of outputs)."""
    name = output_name(image)
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if tag != name:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:6]
        tag = f"{tag}-{digest}" if tag else f"image-{digest}"
    return tag


def parse_override(text: str) -> Tuple[Optional[str], str]:
    """`[STAGE:]KEY=VALUE` -> (stage or None, "KEY=VALUE"); raises ValueError when malformed."""
    m = re.match(r"^(?:([a-z]+):)?([A-Za-z_][\w.\-]*=.*)$", text, re.S)
    if not m:
        raise ValueError(f"{text!r} is not KEY=VALUE or STAGE:KEY=VALUE")
    stage = m.group(1)
    if stage is not None and stage not in OVERRIDABLE:
        raise ValueError(f"{text!r}: unknown stage {stage!r} (one of {', '.join(OVERRIDABLE)})")
    value = m.group(2).split("=", 1)[1].strip().lower().lstrip("+-")
    if value in ("nan", ".nan", "inf", ".inf", "infinity"):
        raise ValueError(f"{text!r}: {m.group(2).split('=', 1)[1]} is not a finite number")
    return stage, m.group(2)


def check_loss_overrides(method: str, lowvram: bool, overrides) -> None:
    """`--set system.loss.KEY=...` must name a loss weight of every training stage it reaches
    (the stage's shipped YAML lists all of them): a misspelt or foreign weight is refused here,
    dry runs included, instead of being dropped by a stage whose guidance is not ours. A stage
    whose `--set` swaps its system or a guidance (whose losses the YAML cannot know) is left to
    launch.py's own check."""
    import difflib

    from omegaconf import OmegaConf

    from ..errors import InputError

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    for stage, ts in METHODS[method].stages[lowvram].items():
        keys = [
            kv.split("=", 1)[0][len("system.loss.") :]
            for st, kv in overrides
            if kv.startswith("system.loss.") and (st == stage or st is None)
        ]
        swaps = [
            kv
            for st, kv in overrides
            if (st == stage or st is None)
            and kv.split("=", 1)[0]
            in ("system_type", "system.guidance_type", "system.guidance_3d_type")
        ]
        if not keys or swaps:
            continue
        weights = set(OmegaConf.load(os.path.join(here, ts.config)).system.loss.keys())
        for key in keys:
            if key in weights:
                continue
            close = difflib.get_close_matches(key, sorted(weights), n=1)
            raise InputError(
                f"--set system.loss.{key}: the {stage} stage ({ts.config}) has no loss weight "
                f"{key!r}",
                f"one of its weights: {', '.join(sorted(weights))}",
                (f"did you mean {close[0]}? " if close else "")
                + "a weight only one stage has takes that stage's prefix, e.g. "
                f"--set {'coarse' if stage == 'refine' else 'refine'}:system.loss.{key}=...",
            )


# left unquoted: words and absolute paths that YAML reads back as the same string (no number,
# no .inf/.nan, no leading sign)
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@+-]*$")


def override(key: str, value: str) -> str:
    """`key=value` for launch.py. OmegaConf YAML-parses the value, so anything that is not a plain
    path-like token is single-quoted (a caption like `a cat: sitting` would otherwise become a
    mapping). `${` cannot survive threestudio's double resolution and is dropped to `{`."""
    value = str(value).replace("${", "{")
    if "\n" in value:
        value = " ".join(value.split())
    if _PLAIN.match(value) and value.lower() not in (
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "null",
        "none",
        "~",
    ):
        return f"{key}={value}"
    return f"{key}='" + value.replace("'", "''") + "'"


# ----------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    out: str
    tag: str
    variant: str
    image: str
    name: str  # preprocessor output name

    @classmethod
    def of(cls, opts: RunOptions) -> "Layout":
        return cls(opts.out, opts.run_tag, opts.variant, opts.image, output_name(opts.image))

    @property
    def preprocessed_dir(self) -> str:
        return os.path.join(self.out, "preprocessed", self.tag)

    def pre(self, suffix: str) -> str:
        return os.path.join(self.preprocessed_dir, self.name + suffix)

    @property
    def rgba(self) -> str:
        return self.pre("_rgba.png")

    @property
    def caption(self) -> str:
        return self.pre("_caption.txt")

    @property
    def aligned_dir(self) -> str:
        return os.path.join(self.out, "aligned", self.tag)

    def aligned(self, name: str = ALIGNED_FILES[0]) -> str:
        return os.path.join(self.aligned_dir, name)

    @property
    def preprocessed_files(self) -> Tuple[str, ...]:
        return tuple(
            self.pre(s)
            for s in ("_rgba.png", "_depth.png", "_normal.png", "_caption.txt", "_preprocess.json")
        )

    def trial(self, run_name: str) -> str:
        return os.path.join(self.out, run_name, self.tag)

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.out, "logs", self.tag)

    def log(self, stage: str) -> str:
        return os.path.join(
            self.logs_dir,
            ("preprocess" if stage == "preprocess" else f"{self.variant}-{stage}") + ".log",
        )

    @property
    def record(self) -> str:
        return os.path.join(self.out, "runs", f"{self.tag}.{self.variant}.json")


def trial_outputs(trial: str) -> Dict[str, str]:
    """Glob patterns of a trial's outputs (the fixed part escaped)."""
    t = glob.escape(trial)
    return {
        "ckpt": os.path.join(t, "ckpts", "last.ckpt"),
        "parsed": os.path.join(t, "configs", "parsed.yaml"),
        "marker": os.path.join(t, MARKER),
        "obj": os.path.join(t, "save", "it*-export", "model.obj"),
        "glb": os.path.join(t, "save", "it*-export", "model.glb"),
        "video": os.path.join(t, "save", "it*-test.mp4"),
        "ply": os.path.join(t, POINTCLOUD),
        "eval": os.path.join(t, EVAL_REPORT),
    }


# ------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class State:
    """What exists in the outputs tree: a set of file paths, and the caption text if written."""

    files: FrozenSet[str] = frozenset()
    caption: Optional[str] = None
    image_sha256: Optional[str] = None  # the photo as it is now
    preprocessed_sha256: Optional[str] = None  # the photo the preprocessed files were made from
    #: training stage -> the inputs it last finished with (its completion marker), if recorded
    identities: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mesh_sha256: Optional[str] = None  # refine-mesh: the --mesh file as it is now
    alignment: Optional[Mapping[str, Any]] = None  # refine-mesh: OUT/aligned/TAG/alignment.json

    def matches(self, pattern: str) -> List[str]:
        parts = pattern.split(os.sep)
        hits = [f for f in self.files if _match_parts(f.split(os.sep), parts)]
        return sorted(hits, key=_step_key)

    def has(self, pattern: str) -> bool:
        return bool(self.matches(pattern))


def _match_parts(path: Sequence[str], pattern: Sequence[str]) -> bool:
    return len(path) == len(pattern) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(path, pattern)
    )


def _step_key(path: str):
    """Sort `.../it5000-export/...` after `.../it900-export/...`."""
    m = re.findall(r"it(\d+)-", path)
    return (int(m[-1]) if m else -1, path)


def newest(paths: Iterable[str]) -> Optional[str]:
    paths = sorted(paths, key=_step_key)
    return paths[-1] if paths else None


def scan_state(opts: RunOptions) -> State:
    """Read the outputs tree of one image and method (no writes)."""
    lay = Layout.of(opts)
    files = {p for p in lay.preprocessed_files if os.path.isfile(p)}
    for st in opts.training_stages:
        trial = lay.trial(opts.training(st).name)
        for pattern in trial_outputs(trial).values():
            files.update(p for p in glob.glob(pattern) if os.path.isfile(p))
    caption = None
    if lay.caption in files:
        try:
            with open(lay.caption, encoding="utf-8") as f:
                caption = f.read().strip()
        except (OSError, UnicodeDecodeError):
            caption = None
    from ..preprocess.pipeline import file_sha256

    current = file_sha256(opts.image) if os.path.isfile(opts.image) else None
    made_from = None
    sidecar = lay.pre("_preprocess.json")
    if sidecar in files:
        try:
            with open(sidecar, encoding="utf-8") as f:
                made_from = (json.load(f).get("input") or {}).get("sha256")
        except (OSError, ValueError, AttributeError):
            made_from = None  # an older or foreign sidecar: no content record
    identities = {}
    for st in opts.training_stages:
        marker = os.path.join(lay.trial(opts.training(st).name), MARKER)
        try:
            with open(marker, encoding="utf-8") as f:
                recorded = json.load(f).get("identity")
        except (OSError, ValueError, AttributeError):
            recorded = None  # no marker, or one written before identities were recorded
        if isinstance(recorded, dict):
            identities[st] = recorded
    mesh_sha, alignment = None, None
    if opts.spec.aligns_mesh:
        files.update(p for p in map(lay.aligned, ALIGNED_FILES) if os.path.isfile(p))
        mesh_sha = file_sha256(opts.mesh) if opts.mesh and os.path.isfile(opts.mesh) else None
        try:
            with open(lay.aligned("alignment.json"), encoding="utf-8") as f:
                alignment = json.load(f)
        except (OSError, ValueError):
            alignment = None
    return State(frozenset(files), caption, current, made_from, identities, mesh_sha, alignment)


# ------------------------------------------------------------------------------------ stages


@dataclass
class Stage:
    name: str
    argv: List[str]
    cwd: str
    env: Dict[str, str] = field(default_factory=dict)  # set on top of the caller's environment
    outputs: List[str] = field(default_factory=list)  # glob patterns that must exist afterwards
    skip: Optional[str] = None  # why it does not run; None: it runs
    why: str = ""  # why it runs
    needs_gpu: bool = False
    trial: Optional[str] = None  # training stages: the threestudio trial folder
    resume: Optional[str] = None  # training stages: the checkpoint it resumes from
    move_aside: Optional[str] = None  # a stale trial folder the runner renames before running
    identity: Dict[str, Any] = field(default_factory=dict)  # training: what shapes its result
    log: str = ""

    @property
    def runs(self) -> bool:
        return self.skip is None

    def command(self) -> str:
        """The exact shell command (cd + environment + argv)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (
            f"cd {shlex.quote(self.cwd)} && " + (env + " " if env else "") + shlex.join(self.argv)
        )


def gpu_env(gpu: str) -> Dict[str, str]:
    """Pin a stage to `gpu` by PCI bus id (launch.py's own convention for --gpu)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": gpu}


def _deps(opts: RunOptions) -> Dict[str, Tuple[str, ...]]:
    spec = opts.spec
    d = {
        "preprocess": (),
        "align": ("preprocess",),
        "coarse": ("preprocess",),
        "refine": ("align",) if spec.aligns_mesh else ("coarse",),
        "export": (spec.mesh_from,),
        "glb": ("export",),
        "video": ("refine",),  # but a refine run makes the video itself (see plan_stages)
        "eval": ("preprocess", "refine", "video"),
    }
    if spec.pointcloud:
        d["ply"] = ("refine",)
    return d


def stage_names(method: str) -> Tuple[str, ...]:
    spec = METHODS[method]
    skip = {"ply"} if not spec.pointcloud else set()
    skip |= {"coarse"} if spec.aligns_mesh else {"align"}
    return tuple(s for s in STAGE_ORDER if s not in skip)


def _short(path: str, base: str) -> str:
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


#: launch.py overrides that export a finished trial as a textured OBJ (+ MTL) through threestudio's
#: mesh exporter; "cuda" is nvdiffrast's context without OpenGL, which headless machines lack
MESH_EXPORT = (
    "system.exporter_type=mesh-exporter",
    "system.exporter.fmt=obj-mtl",
    "system.exporter.context_type=cuda",
)


@dataclass
class _Plan:
    """What every stage builder reads: the options, the outputs tree, where things go."""

    opts: RunOptions
    state: State
    lay: Layout
    trials: Dict[str, str]
    outs: Dict[str, Dict[str, str]]
    env: Dict[str, str]
    identities: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # planned training inputs

    @property
    def spec(self) -> MethodSpec:
        return self.opts.spec

    @property
    def launch(self) -> List[str]:
        return [self.opts.python, "launch.py"]

    def hifi123(self, *args: str) -> List[str]:
        """The command line of a `hifi123` subcommand, run by the run's own Python."""
        return [self.opts.python, "-m", "hifi123.cli", *args]

    def user_overrides(self, stage: str) -> List[str]:
        return [
            kv
            for st, kv in self.opts.overrides
            if st == stage or (st is None and stage in TRAINING_STAGES)
        ]

    def on_gpu(self, stage: Stage, trial: str) -> None:
        stage.cwd, stage.env, stage.needs_gpu, stage.trial = (
            self.opts.threestudio_root,
            dict(self.env),
            True,
            trial,
        )

    def relaunch(self, stage: Stage, trial: str, mode: str, *overrides: str) -> None:
        """`stage` runs launch.py in `mode` (--test, --export) on a finished trial: its parsed
        config, resumed from its last checkpoint, then `overrides` and the user's for `stage`."""
        self.on_gpu(stage, trial)
        stage.argv = [
            *self.launch,
            "--config",
            os.path.join(trial, "configs", "parsed.yaml"),
            mode,
            "--gpu",
            self.opts.gpu,
            override("resume", os.path.join(trial, "ckpts", "last.ckpt")),
            *overrides,
            *self.user_overrides(stage.name),
        ]


# Each builder fills the stage's command and outputs; it returns whether the stage is done when
# that is more than "all its outputs exist" (None: decide from the outputs).
def _build_preprocess(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    opts, lay = p.opts, p.lay
    stage.argv = p.hifi123("preprocess", opts.image, "--out", lay.preprocessed_dir)
    if opts.prompt is not None:
        stage.argv += ["--caption", opts.prompt]
    stage.env = dict(p.env)
    stage.outputs = [glob.escape(f) for f in lay.preprocessed_files]
    # the photo at the same path was edited or replaced since it was preprocessed: redo all of it
    if (
        p.state.image_sha256
        and p.state.preprocessed_sha256
        and p.state.image_sha256 != p.state.preprocessed_sha256
    ):
        stage.why = f"{opts.image} changed since it was preprocessed (its content differs)"
        return False
    # the preprocessor writes --caption as one line with whitespace runs collapsed
    if (
        opts.prompt is not None
        and p.state.caption is not None
        and p.state.caption != " ".join(opts.prompt.split())
    ):
        stage.why = "the caption differs from --prompt"
        return False  # --prompt changed: re-caption (and redo what depends on the caption)
    return None


def _build_training(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    opts, lay, state, name = p.opts, p.lay, p.state, stage.name
    ts = opts.training(name)
    trial, o = p.trials[name], p.outs[name]
    p.on_gpu(stage, trial)
    stage.argv = p.launch + [
        "--config",
        f"{CONFIG_DIR}/{ts.config}",
        "--train",
        "--gpu",
        opts.gpu,
        override("data.image_path", lay.rgba),
        override("exp_root_dir", opts.out),
        override("name", ts.name),
        override("tag", lay.tag),
        "use_timestamp=false",  # deterministic trial folder OUT/<name>/<tag>: resumable
        "checkpoint.save_last=true",  # ckpts/last.ckpt: what refine, export and resume use
    ]
    if name == "refine" and p.spec.aligns_mesh:
        stage.argv += _aligned_mesh_args(p)
    elif name == "refine":
        stage.argv.append(
            override(p.spec.chain_key, os.path.join(p.trials["coarse"], "ckpts", "last.ckpt"))
        )
    text = opts.prompt if opts.prompt is not None else state.caption
    if p.spec.prompt_key:
        stage.argv.append(
            override(
                p.spec.prompt_key,
                text if text is not None else CAPTION_PLACEHOLDER.format(path=lay.caption),
            )
        )
    stage.outputs = [o["ckpt"], o["parsed"]]
    stage.identity = _training_identity(p, name, text if p.spec.prompt_key else None)
    p.identities[name] = stage.identity
    done = state.has(o["marker"]) and state.has(o["ckpt"])
    changed = _identity_change(state.identities.get(name), stage.identity) if done else None
    if changed:
        done = False
        stage.move_aside = trial
        stage.why = f"redo from scratch: {changed} since it finished"
    elif not done or upstream:
        if state.has(o["ckpt"]) and not upstream:
            stage.resume = os.path.join(trial, "ckpts", "last.ckpt")
            stage.argv.append(override("resume", stage.resume))
            stage.why = "resume: ckpts/last.ckpt without a completion marker (interrupted run)"
        elif state.has(o["ckpt"]) or state.has(o["marker"]):
            stage.move_aside = trial
            stage.why = (
                f"redo from scratch, {', '.join(upstream)} runs again"
                if upstream
                else "the trial has no usable checkpoint: from scratch"
            )
    stage.argv += p.user_overrides(name)
    return done


def _training_identity(p: _Plan, name: str, prompt: Optional[str]) -> Dict[str, Any]:
    """What shapes a training stage's result besides the shipped config: the photo's content,
    the prompt, the user's `--set` options for it and, for refine, the coarse stage's identity."""
    identity: Dict[str, Any] = {
        "image_sha256": p.state.preprocessed_sha256 or p.state.image_sha256,
        "prompt": prompt,
        "set": p.user_overrides(name),
    }
    if name == "refine" and p.spec.aligns_mesh:
        identity["alignment"] = _identity_key((p.state.alignment or {}).get("matrix") or {})
    elif name == "refine":
        identity["coarse"] = _identity_key(p.identities.get("coarse", {}))
    return identity


def _aligned_mesh_args(p: _Plan) -> List[str]:
    """refine-mesh: the aligned mesh and the reference camera it was aligned for."""
    lay = p.lay
    camera = (p.state.alignment or {}).get("reference_camera") or {}
    elevation = camera.get("elevation_deg")
    if isinstance(elevation, (int, float)) and not isinstance(elevation, bool):
        elev = f"data.default_elevation_deg={float(elevation):.6g}"  # a number, unquoted
    else:  # not aligned yet (a dry run): the runner re-plans after the align stage
        elev = override(
            "data.default_elevation_deg",
            ALIGNMENT_PLACEHOLDER.format(path=lay.aligned("alignment.json")),
        )
    return [override(p.spec.chain_key, "mesh:" + lay.aligned()), elev]


def _build_align(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    opts, lay, state = p.opts, p.lay, p.state
    # --overwrite: the folder is this stage's own
    stage.argv = p.hifi123(
        "align-mesh", str(opts.mesh), "--ref", lay.rgba, "--out", lay.aligned_dir, "--overwrite"
    )
    if opts.pose:
        stage.argv += ["--pose", opts.pose]
    stage.outputs = [glob.escape(lay.aligned(n)) for n in ALIGNED_FILES]
    record = state.alignment or {}
    if all(state.has(f) for f in stage.outputs):
        if state.mesh_sha256 and record.get("mesh_sha256") != state.mesh_sha256:
            stage.why = f"{opts.mesh} is not the mesh that was aligned (its content differs)"
            return False
        if record.get("pose_option") != opts.pose:
            stage.why = "--pose changed since the alignment"
            return False
    return None


def _identity_key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def _identity_change(
    recorded: Optional[Mapping[str, Any]], current: Mapping[str, Any]
) -> Optional[str]:
    """What differs between the inputs a finished stage recorded and today's, in words (None: the
    same, or nothing recorded by an older version)."""
    if recorded is None:
        return None
    said = {
        "image_sha256": "the photo's content changed",
        "prompt": "the prompt changed",
        "coarse": "the coarse stage it starts from was redone with other inputs",
    }
    changes = []
    for key in current:
        if recorded.get(key) == current[key]:
            continue
        if key == "set":
            changes.append(
                f"--set changed (now {current[key] or 'none'}, was {recorded.get(key) or 'none'})"
            )
        else:
            changes.append(said.get(key, f"{key} changed"))
    return "; ".join(changes) or None


def _build_export(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    trial, o = p.trials[p.spec.mesh_from], p.outs[p.spec.mesh_from]
    p.relaunch(
        stage,
        trial,
        "--export",
        *MESH_EXPORT,
    )
    stage.outputs = [o["obj"]]
    return None


def _build_glb(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    trial, o = p.trials[p.spec.mesh_from], p.outs[p.spec.mesh_from]
    stage.argv = [p.opts.python, "-m", "hifi123.run.export", "glb", trial]
    stage.outputs = [o["glb"]]
    stage.trial = trial
    obj = newest(p.state.matches(o["obj"]))  # the GLB must belong to the newest export
    return obj is not None and p.state.has(
        os.path.join(glob.escape(os.path.dirname(obj)), "model.glb")
    )


def _build_ply(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    trial, o = p.trials["refine"], p.outs["refine"]
    stage.argv = [
        p.opts.python,
        "-m",
        "hifi123.run.export",
        "ply",
        os.path.join(trial, "ckpts", "last.ckpt"),
        "--out",
        os.path.join(trial, POINTCLOUD),
    ]
    stage.outputs = [o["ply"]]
    stage.trial = trial
    return None


def _build_video(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    trial, o = p.trials["refine"], p.outs["refine"]
    p.relaunch(stage, trial, "--test")
    stage.outputs = [o["video"]]
    return None


def _build_eval(p: _Plan, stage: Stage, upstream: List[str]) -> Optional[bool]:
    trial, o = p.trials["refine"], p.outs["refine"]
    stage.argv = p.hifi123(
        "eval",
        "single-view",
        "--ref",
        p.lay.rgba,
        "--views",
        trial,
        "--out",
        os.path.join(trial, EVAL_REPORT),
    )
    stage.env = dict(p.env)
    stage.outputs = [o["eval"]]
    stage.trial = trial
    return None


_BUILDERS = {
    "preprocess": _build_preprocess,
    "align": _build_align,
    "export": _build_export,
    "glb": _build_glb,
    "ply": _build_ply,
    "video": _build_video,
    "eval": _build_eval,
    **{st: _build_training for st in TRAINING_STAGES},
}


def plan_stages(opts: RunOptions, state: State, ran: Iterable[str] = ()) -> List[Stage]:
    """The stages for one image, in order, each with its exact command and whether it runs.

    Pure: depends only on `opts`, `state` (the outputs tree) and `ran` (stages already run in this
    invocation, whose dependents must run again)."""
    lay = Layout.of(opts)
    trials = {st: lay.trial(opts.training(st).name) for st in opts.training_stages}
    plan = _Plan(
        opts,
        state,
        lay,
        trials,
        {st: trial_outputs(t) for st, t in trials.items()},
        gpu_env(opts.gpu),
    )
    ran, deps = set(ran), _deps(opts)
    stages: List[Stage] = []
    pending: set = set()
    for name in stage_names(opts.method):
        # a dependency that runs, or ran in this invocation after this stage last ran, forces a redo
        upstream = [d for d in deps[name] if d in pending or (d in ran and name not in ran)]
        made_by_refine = False
        if name == "video" and "refine" in upstream:
            # `launch.py --train` ends with a test pass that writes save/it<N>-test.mp4: a refine
            # run that is pending or just ran makes the video, no separate test run is needed
            upstream.remove("refine")
            made_by_refine = "refine" in pending
        stage = Stage(name=name, argv=[], cwd=opts.out, log=lay.log(name))
        done = _BUILDERS[name](plan, stage, upstream)
        if done is None:
            done = all(state.has(f) for f in stage.outputs)
        if made_by_refine:
            stage.skip = "made by the refine run (launch.py --train ends with a test pass)"
        elif done and not upstream:
            shown = [_short(newest(state.matches(f)) or f, opts.out) for f in stage.outputs]
            stage.skip = "done: " + ", ".join(shown)
            if name == "video":
                stage.skip += " (written by the refine run's test pass)"
        else:
            pending.add(name)
            if not stage.why:
                stage.why = f"redo, {', '.join(upstream)} runs again" if done else "not done yet"
        stages.append(stage)
    return stages


def pending_stages(stages: Sequence[Stage]) -> List[Stage]:
    return [s for s in stages if s.runs]
