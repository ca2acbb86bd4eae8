"""Run the tools in subprocesses the way a user does: plain python, torchpack dist-run, torchrun.

``torchpack dist-run`` needs OpenMPI 4's ``mpirun`` on PATH (Debian: ``apt-get install -y
openmpi-bin``); tests that need it skip with that hint when it is missing. torchpack already
passes ``--allow-run-as-root``; the environment below also sets OpenMPI's root variables so
``mpirun`` works as root (CI containers) without anything set by hand.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
from nuscenes_synthetic_data import synthetic_nuscenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "configs", "toy", "toy.yaml")
TOY_CYCLIC_CONFIG = os.path.join(REPO, "tests", "configs", "toy", "toy_cyclic.yaml")
TEACHER_CONFIG = os.path.join(REPO, "configs", "synthetic", "det", "centerhead", "second", "camera+lidar", "convfuser.yaml")
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def teacher_fast(tmp_path_factory) -> list[str]:
    """Overrides that run the synthetic teacher config for a few iterations on CPU, on the small
    embedded dataset the test session generates (320x180 images, scaled by 1.1 to the config's
    352-pixel width)."""
    data = synthetic_nuscenes(tmp_path_factory)
    # no spaces in values: torchpack dist-run passes the command through a shell-split string
    return ["--dataset_root", data["root"].rstrip("/") + "/", "--augment2d.resize", "[[1.1,1.1],[1.1,1.1]]",
            "--max_epochs", "1", "--data.workers_per_gpu", "0", "--data.samples_per_gpu", "1"]


needs_mpirun = pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="mpirun not found: install OpenMPI 4 (apt-get install -y openmpi-bin) for torchpack dist-run"
)
needs_torchpack = pytest.mark.skipif(
    not os.path.exists(os.path.join(BIN, "torchpack")), reason=f"torchpack launcher not found next to {sys.executable}"
)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # torchrun/torchpack children inherit these; stray launcher variables would confuse them
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK", "MASTER_HOST"):
        env.pop(key, None)
    return env


def run_tool(tool: str, *args: str, launcher: str = "python", nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py args`` with ``launcher`` ('python', 'torchpack' or 'torchrun')."""
    script = os.path.join(REPO, "tools", f"{tool}.py")
    if launcher == "python":
        cmd = [sys.executable, script]
    elif launcher == "torchpack":
        cmd = [os.path.join(BIN, "torchpack"), "dist-run", "-np", str(nproc), sys.executable, script]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), script]
    else:
        raise ValueError(launcher)
    return subprocess.run(cmd + list(args), cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def load_weights(path: str) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["state_dict"] if "state_dict" in obj else obj


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], parameters_only: bool = False) -> float:
    """Largest difference over all entries (or all but BatchNorm running statistics)."""
    assert set(a) == set(b), f"different keys: {sorted(set(a) ^ set(b))}"
    keys = [k for k in a if a[k].numel() and not (parameters_only and k.endswith(BN_BUFFERS))]
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@contextlib.contextmanager
def isolated_registries():
    """Registrations made inside (the toy components) are undone on exit.

    Tests that sweep every registered component then never meet the toy ones, whatever ran
    before them in the same process. The project's own components are imported first so they
    stay registered.
    """
    import mmdet3d.datasets  # noqa: F401
    import mmdet3d.datasets.builder as datasets_builder
    import mmdet3d.models  # noqa: F401
    import mmdet3d.models.builder as models_builder
    from mmdet3d.utils.registry import Registry

    registries = [obj for mod in (datasets_builder, models_builder) for obj in vars(mod).values() if isinstance(obj, Registry)]
    saved = [(reg, dict(reg._modules)) for reg in registries]
    modules_before = set(sys.modules)
    try:
        yield
    finally:
        for reg, modules in saved:
            reg._modules.clear()
            reg._modules.update(modules)
        for name in set(sys.modules) - modules_before:
            if name.startswith("tests."):
                del sys.modules[name]


def run_tool_inprocess(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py`` inside this process (no interpreter start-up: for quick error checks).

    An exception that escapes the tool's own error handling propagates (and fails the test);
    ``SystemExit`` becomes the return code, stdout/stderr are captured.
    """
    import io
    import runpy

    script = os.path.join(REPO, "tools", f"{tool}.py")
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    code = 0
    try:
        sys.argv = [script, *args]
        os.chdir(REPO)
        with isolated_registries(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return subprocess.CompletedProcess(args=[script, *args], returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
