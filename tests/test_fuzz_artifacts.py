"""Spec and directions folders: fuzzed loaders, declared schemas, checksums, and the atomic writers' leftovers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError
from safetensors.torch import load_file, save_file

from tests.fuzzing.artifacts import run_directions, run_spec
from workbench import io, manifests, models, spectral
from workbench.directions import Direction, DirectionSet, Quality
from workbench.errors import WorkbenchError
from workbench.export import apply_hf
from workbench.export.spec import Provenance, Spec, spec_from_directions
from workbench.interventions import AddDirection, intervention_from_dict
from workbench.positions import Positions
from workbench.schema import MAX_SCALE
from workbench.sites import HookSite

ROOT = Path(__file__).resolve().parents[1]
#: what a constructor raises for a bad value: the workbench's own check, or under the test suite's runtime type
#: checker (``--jaxtyping-packages``) the annotation's, where the annotation already excludes the value
REFUSED = (WorkbenchError, TypeCheckError)


# ------------------------------------------------------------------------------------------------------ fuzz


@pytest.mark.parametrize("run", [run_spec, run_directions], ids=["spec", "directions"])
def test_fuzzed_folders_are_refused_or_read_faithfully(run, tmp_path):
    r = run(300, 0, tmp_path)
    assert r["raw_exception"] == 0 and r["silent_acceptance"] == 0 and r["refused_valid"] == 0, r["examples"]
    assert r["accepted_valid"] > 0 and r["refused"] > 0 and r["accepted_edit"] > 0
    assert run(40, 7, tmp_path)["refused"] == run(40, 7, tmp_path)["refused"]  # deterministic


# ------------------------------------------------------------------------------------------------ fixtures


def vec(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def spec_folder(llama, tmp_path):
    spec = Spec((AddDirection(HookSite(1), vec(32), 2.0),), models.fingerprint(llama), Provenance("test"))
    return spec.save(tmp_path / "s")


@pytest.fixture
def dirs_folder(llama, tmp_path):
    ds = DirectionSet(
        tuple(Direction(HookSite(layer), vec(32, layer), Quality(1.0, None, None, None)) for layer in range(3)),
        "mean",
        "last",
        models.fingerprint(llama),
        "h",
        4,
    )
    return ds.save(tmp_path / "d")


def edit_json(path, fn):
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def both_refuse(folder, llama, match):
    with pytest.raises(WorkbenchError, match=match):
        Spec.load(folder, llama)
    with pytest.raises(apply_hf.SpecError, match=match):
        apply_hf.load_spec(folder)


def forge(folder, manifest, tensors_file, tensors):
    """Rewrite the tensor file and the manifest's checksum to match: only the content checks stand in the way."""
    save_file(tensors, str(folder / tensors_file))
    edit_json(folder / manifest, lambda m: m.update(tensors_sha256=io.sha256_file(folder / tensors_file)))


# ----------------------------------------------------------------------------------------- values and files


@pytest.mark.parametrize("bad", [True, False, 1e308, -1e308, MAX_SCALE * 1.01, float("nan"), float("inf"), "2"])
def test_bad_scales_are_refused_by_the_constructor(bad):
    refused = WorkbenchError if isinstance(bad, float) else REFUSED
    with pytest.raises(refused, match="scale"):
        AddDirection(HookSite(1), vec(32), bad)
    with pytest.raises(refused, match="scale"):
        AddDirection(HookSite(1), vec(32), (1.0, bad))


@pytest.mark.parametrize("bad", [True, False, 1e308, -1e308, MAX_SCALE * 1.01, 10**400, "2", None, [2.0]])
def test_bad_scales_are_refused_in_a_spec_file(bad, llama, spec_folder):
    edit_json(spec_folder / "intervention.json", lambda m: m["interventions"][0].update(scale=bad))
    both_refuse(spec_folder, llama, r"scale")


def test_spec_from_directions_refuses_a_boolean_or_huge_scale(llama, dirs_folder):
    ds = DirectionSet.load(dirs_folder, llama)
    for bad in (True, 1e308):
        with pytest.raises(WorkbenchError if bad == 1e308 else REFUSED, match="scale"):
            spec_from_directions(ds, [1], bad)
    assert spec_from_directions(ds, [1], MAX_SCALE).interventions[0].scale == MAX_SCALE


@pytest.mark.parametrize("bad", [True, 2.5, "1", None, 2**40])
def test_positions_start_must_be_an_int(bad, llama, spec_folder):
    with pytest.raises(WorkbenchError if bad is True or bad == 2**40 else REFUSED, match="start"):
        Positions("from", bad)
    with pytest.raises(WorkbenchError, match="start"):
        Positions.from_dict({"kind": "from", "start": bad})
    edit_json(
        spec_folder / "intervention.json",
        lambda m: m["interventions"][0].update(positions={"kind": "from", "start": bad}),
    )
    both_refuse(spec_folder, llama, r"interventions\[0\]\.positions\.start")
    assert Positions.from_dict({"kind": "from", "start": -1}) == Positions("from", -1)


def test_unknown_basis_and_versions_are_refused(llama, spec_folder, dirs_folder):
    edit_json(spec_folder / "intervention.json", lambda m: m.update(basis="fold_ln"))
    both_refuse(spec_folder, llama, "basis")
    edit_json(dirs_folder / "directions.json", lambda m: m.update(basis="centred"))
    with pytest.raises(WorkbenchError, match="basis: input should be 'unprocessed'"):
        DirectionSet.load(dirs_folder, llama)
    edit_json(dirs_folder / "directions.json", lambda m: m.update(basis="unprocessed", schema_version=True))
    with pytest.raises(WorkbenchError, match="schema_version True is not supported"):
        DirectionSet.load(dirs_folder, llama)


def test_empty_directions_list_is_refused(llama, dirs_folder):
    edit_json(dirs_folder / "directions.json", lambda m: m.update(directions=[]))
    with pytest.raises(WorkbenchError, match="directions.json: directions: list should have at least 1 item"):
        DirectionSet.load(dirs_folder, llama)


def test_fields_are_checked_with_file_and_path(llama, spec_folder, dirs_folder):
    cases = [
        (lambda m: m["interventions"][0]["site"].update(layer=3, hook="blocks.3.hook_resid_post"), "3 blocks"),
        (lambda m: m["interventions"][0]["site"].update(kind="resid_pots"), r"interventions\[0\]\.site\.kind"),
        (lambda m: m["interventions"][0]["site"].update(layer=2), "disagrees with layer 2"),
        (lambda m: m["interventions"][0].update(colour="red"), r"interventions\[0\]\.colour: extra inputs"),
        (lambda m: m["interventions"][0].update(kind="steer"), "unknown intervention kind"),
        (lambda m: m["model"].update(n_layers=2.0), r"model\.n_layers: input should be a valid integer"),
        (lambda m: m["provenance"].pop("tokenization"), r"provenance\.tokenization: field required"),
        (lambda m: m["interventions"][0]["tensors"].update(vector="1.vector"), "missing"),
    ]
    original = (spec_folder / "intervention.json").read_text()
    for fn, match in cases:
        (spec_folder / "intervention.json").write_text(original)
        edit_json(spec_folder / "intervention.json", fn)
        both_refuse(spec_folder, llama, f"intervention.json: .*{match}")
    edit_json(dirs_folder / "directions.json", lambda m: m["directions"][0].update(tensor="blocks.1.hook_resid_post"))
    with pytest.raises(WorkbenchError, match=r"directions\[0\]: .*not the site's hook name"):
        DirectionSet.load(dirs_folder, llama)


def test_a_square_tensor_is_refused_where_a_vector_is_required(llama, spec_folder, dirs_folder):
    forge(spec_folder, "intervention.json", "tensors.safetensors", {"0.vector": torch.randn(32, 32)})
    both_refuse(spec_folder, llama, r"has shape \[32, 32\], expected \[32\]")
    forge(spec_folder, "intervention.json", "tensors.safetensors", {"0.vector": torch.randn(32).double()})
    both_refuse(spec_folder, llama, "float64, expected float32")
    forge(spec_folder, "intervention.json", "tensors.safetensors", {"0.vector": torch.randn(32)[None]})
    both_refuse(spec_folder, llama, r"has shape \[1, 32\], expected \[32\]")
    tensors = load_file(str(dirs_folder / "directions.safetensors"))
    tensors["blocks.1.hook_resid_post"] = torch.randn(32, 32)
    forge(dirs_folder, "directions.json", "directions.safetensors", tensors)
    with pytest.raises(WorkbenchError, match=r"has shape \[32, 32\], expected \[32\]"):
        DirectionSet.load(dirs_folder, llama)


def test_one_flipped_byte_is_refused_by_the_checksum(llama, spec_folder, dirs_folder):
    for folder, name in ((spec_folder, "tensors.safetensors"), (dirs_folder, "directions.safetensors")):
        data = bytearray((folder / name).read_bytes())
        data[-5] ^= 0x01  # one bit of one float: still a readable, finite tensor
        (folder / name).write_bytes(bytes(data))
    match = "do not match the manifest's checksum: the folder was modified or corrupted; re-export it"
    both_refuse(spec_folder, llama, match)
    with pytest.raises(WorkbenchError, match=match):
        DirectionSet.load(dirs_folder, llama)


def test_a_manifest_from_before_checksums_loads_and_saving_adds_one(llama, spec_folder, dirs_folder, tmp_path):
    edit_json(spec_folder / "intervention.json", lambda m: m.pop("tensors_sha256"))
    edit_json(dirs_folder / "directions.json", lambda m: m.pop("tensors_sha256"))
    spec, ds = Spec.load(spec_folder, llama), DirectionSet.load(dirs_folder, llama)
    apply_hf.load_spec(spec_folder)
    edit_json(spec_folder / "intervention.json", lambda m: m.update(tensors_sha256=None))
    both_refuse(spec_folder, llama, "tensors_sha256: value error, must be the sha256 of the tensor file")
    for folder, manifest, tensors in (
        (spec.save(tmp_path / "s2"), "intervention.json", "tensors.safetensors"),
        (ds.save(tmp_path / "d2"), "directions.json", "directions.safetensors"),
    ):
        assert json.loads((folder / manifest).read_text())["tensors_sha256"] == io.sha256_file(folder / tensors)


def test_intervention_from_dict_uses_the_same_schema():
    iv = AddDirection(HookSite(1), vec(16), (1.0, 2.0), Positions("from", -1))
    assert intervention_from_dict(iv.to_dict(), iv.tensors()).scale == (1.0, 2.0)
    for bad, match in [
        ({**iv.to_dict(), "scale": True}, "scale"),
        ({**iv.to_dict(), "positions": {"kind": "from", "start": True}}, r"positions\.start"),
        ({**iv.to_dict(), "extra": 1}, "extra"),
        ({**iv.to_dict(), "scale": []}, "non-empty list"),
        ([], "unknown intervention kind"),
    ]:
        with pytest.raises(WorkbenchError, match=match):
            intervention_from_dict(bad, iv.tensors())


def test_shared_constants_agree():
    assert manifests.SPECTRAL_FEATURES == spectral.FEATURES and manifests.SPECTRAL_COMBINES == spectral.COMBINES
    assert issubclass(apply_hf.SpecError, WorkbenchError)


# ------------------------------------------------------------------------------------------- paths and modes


def test_a_directory_or_file_in_the_wrong_place_is_named_as_such(tmp_path, spec_folder):
    (tmp_path / "dir").mkdir()
    with pytest.raises(WorkbenchError, match="is a directory; expected a safetensors file"):
        io.read_tensors(tmp_path / "dir")
    with pytest.raises(WorkbenchError, match="is a directory; expected a JSON file"):
        io.read_json(tmp_path / "dir")
    with pytest.raises(WorkbenchError, match="is a directory; expected a file path"):
        io.write_json(tmp_path / "dir", {})
    (tmp_path / "file").write_text("{}")
    with pytest.raises(WorkbenchError, match="is a file; expected a directory path"):
        with io.atomic_dir(tmp_path / "file"):
            pass
    for load in (Spec.load, DirectionSet.load, apply_hf.load_spec):
        with pytest.raises(WorkbenchError, match="is a file, not a"):
            load(tmp_path / "file")
    (spec_folder / "tensors.safetensors").unlink()
    (spec_folder / "tensors.safetensors").mkdir()
    with pytest.raises(WorkbenchError, match="is a directory; expected a safetensors file"):
        Spec.load(spec_folder)
    os.rmdir(spec_folder / "tensors.safetensors")
    os.mkfifo(spec_folder / "tensors.safetensors")
    with pytest.raises(WorkbenchError, match="not a regular file"):
        Spec.load(spec_folder)


def test_written_files_get_the_same_permissions(spec_folder, dirs_folder):
    mask = os.umask(0)
    os.umask(mask)
    for folder in (spec_folder, dirs_folder):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
        modes = {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()}
        assert set(modes.values()) == {0o666 & ~mask}, modes


# ------------------------------------------------------------------------------------------ stale temp entries


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def owner(pid: int) -> str:
    return f"{io._HOST}-{pid}"


def test_stale_temp_entries_of_the_target_are_removed_and_live_ones_kept(tmp_path):
    out, dead = tmp_path / "out", dead_pid()
    stale = [tmp_path / f".out.tmp.{owner(dead)}.abc123", tmp_path / f".out.old.{owner(dead)}"]
    for p in stale:
        p.mkdir()
        (p / "big.safetensors").write_bytes(b"x" * 100)
    stale_file = tmp_path / f".out.json.tmp.{owner(dead)}.q1w2e3"
    stale_file.write_text("{}")
    kept = [
        tmp_path / f".out.tmp.{owner(os.getpid())}.live99",  # a writer that still runs
        tmp_path / f".out.tmp.00000000-{dead}.other",  # another host's: its process cannot be judged here
        tmp_path / f".other.tmp.{owner(dead)}.abc",  # another target's
        tmp_path / ".out.a1b2c3d4",  # not a name the writers make
    ]
    for p in kept:
        p.mkdir()
    assert io.stale_entries(out) == sorted(stale)
    with io.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    io.write_json(tmp_path / "out.json", {"a": 1})
    assert not stale_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", "out.json", *(p.name for p in kept)])


WRITER = """
import sys, time
from pathlib import Path
from workbench.io import atomic_dir, atomic_file
out = Path(sys.argv[1])
if sys.argv[2] == "dir":
    with atomic_dir(out) as tmp:
        (tmp / "tensors.safetensors").write_bytes(b"x" * 1000)
        print("ready", flush=True)
        time.sleep(120)
else:
    def write(p):
        Path(p).write_bytes(b"x" * 1000)
        print("ready", flush=True)
        time.sleep(120)
    atomic_file(out, write)
"""


@pytest.mark.parametrize("what", ["dir", "file"])
def test_a_writer_killed_mid_write_leaves_an_entry_the_next_write_removes(what, tmp_path):
    out = tmp_path / ("out" if what == "dir" else "out.json")
    if what == "dir":
        with io.atomic_dir(out) as tmp:  # an artifact the killed writer was replacing
            (tmp / "old").write_text("old")
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(out), what], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = [e for e in tmp_path.iterdir() if e.name.startswith(f".{out.name}.tmp.")]
    assert len(left) == 1 and io.stale_entries(out) == left
    if what == "dir":
        assert (out / "old").exists()  # the kill left the old artifact whole
        with io.atomic_dir(out) as tmp:
            (tmp / "new").write_text("new")
        assert (out / "new").exists() and not (out / "old").exists()
    else:
        io.write_json(out, {"a": 1})
        assert json.loads(out.read_text()) == {"a": 1}
    assert sorted(e.name for e in tmp_path.iterdir()) == [out.name]
