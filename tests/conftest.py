"""Shared fixtures: the real data in ../shared/data (skipped when absent), synthetic slides."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SLIDES = SHARED / "slides"
TILES = SHARED / "tiles"
SVS = SLIDES / "CMU-1-Small-Region.svs"
PYRAMID = SLIDES / "CMU-1-Small-Region_pyramid_generic.tiff"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found: {path}")
    return path


@pytest.fixture(params=["openslide", "pyvips"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def svs() -> Path:
    return need(SVS)


@pytest.fixture
def pyramid() -> Path:
    return need(PYRAMID)


@pytest.fixture(params=["svs", "pyramid"])
def real_slide(request: pytest.FixtureRequest) -> Path:
    return need(SVS if request.param == "svs" else PYRAMID)


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20000 x 16000 px pyramidal TIFF at 0.25 mpp (about 500 tiles of 256 px at 0.5 mpp)."""
    from wsi.synthetic import make_synthetic_slide

    path = tmp_path_factory.mktemp("synthetic") / "synth.tiff"
    make_synthetic_slide(path, width=20000, height=16000, mpp=0.25, seed=3)
    return path


#: The patient name and ID written into the metadata of ``dicom_svs``: never in an output.
DICOM_PATIENT = ("Doe^Jane", "PID-0042")


def dicomize(src: Path, out: Path, patient: tuple[str, str] | None = None, **kwargs) -> Path:
    """``src`` converted with wsidicomizer into the DICOM slide ``out`` (a folder of .dcm
    files; ``patient``: name and ID to write into its metadata). Skips, saying what to
    install, where wsidicomizer or libturbojpeg is missing."""
    try:
        from turbojpeg import TurboJPEG

        TurboJPEG()  # finds the native library, or raises
    except (ImportError, OSError, RuntimeError) as err:
        pytest.skip(
            f"libturbojpeg or PyTurboJPEG missing ({err}): `apt-get install libturbojpeg0` "
            "and `pip install -e '.[dev]'` (wsidicomizer) to make DICOM test slides"
        )
    try:
        from wsidicomizer import WsiDicomizer
    except ImportError as err:
        pytest.skip(f"wsidicomizer missing ({err}): `pip install -e '.[dev]'`")
    if patient is not None:
        from pydicom import Dataset

        meta = Dataset()
        meta.PatientName, meta.PatientID = patient
        kwargs["metadata_post_processor"] = meta
    out.mkdir(parents=True)
    WsiDicomizer.convert(src, out, **kwargs)
    return out


def data_images(html: str) -> list:
    """The images embedded in ``html`` as ``data:`` URIs (JPEG or PNG), as RGB arrays."""
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    found = re.findall(r"data:image/(?:jpeg|png);base64,([A-Za-z0-9+/=]+)", html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(d))).convert("RGB")) for d in found]


def looks_like(a, b) -> bool:
    """Whether RGB images ``a`` and ``b`` look alike (mean difference <= 15 of 255 at
    48 x 48 px): the check that an output image is not a label or macro image."""
    import numpy as np
    from PIL import Image

    small = [np.asarray(Image.fromarray(x).resize((48, 48))).astype(np.int16) for x in (a, b)]
    return bool(np.abs(small[0] - small[1]).mean() <= 15)


@pytest.fixture(scope="session")
def dicom_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Aperio slide as a DICOM slide: a folder ``CMU-1-Small-Region`` of 4 .dcm files
    (its one level, 2220 x 2967 px; label, overview (macro), thumbnail), with
    ``DICOM_PATIENT`` in its metadata. Skips without ../shared. (wsidicomizer's
    ``add_missing_levels`` writes edge tiles of the wrong size, which OpenSlide refuses.)"""
    src = need(SVS)
    out = tmp_path_factory.mktemp("dicom_svs") / src.stem
    return dicomize(src, out, DICOM_PATIENT)


@pytest.fixture(scope="session")
def dicom_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic slide (4000 x 3000 px at 0.5 mpp; no ../shared needed) as a DICOM
    slide: a folder ``synth_dicom`` of 5 .dcm files, one per level; the 4 below full
    resolution are marked RESAMPLED in their DICOM ImageType."""
    from wsi.synthetic import make_synthetic_slide

    root = tmp_path_factory.mktemp("dicom_synthetic")
    make_synthetic_slide(root / "synth.tiff", width=4000, height=3000, mpp=0.5, seed=3)
    return dicomize(root / "synth.tiff", root / "synth_dicom")


@pytest.fixture(scope="session")
def predicted(tmp_path_factory):
    """A small real run: cohort slides, tiles, embeddings, ABMIL, predictions.

    Returns (root, cohort, model name); stores in root/stores, the model in root/abmil.
    """
    from wsi.config import EmbedConfig
    from wsi.embed import embed_store
    from wsi.encoders import load_encoder
    from wsi.mil.predict import load_model, predict_store
    from wsi.mil.train import TrainConfig, train_model
    from wsi.synthetic import make_cohort
    from wsi.tiling import tile_slide

    root = tmp_path_factory.mktemp("heat")
    cohort = make_cohort(root / "cohort", slides=8, size=3000, seed=5, min_lesion_diameter_um=192)
    enc = load_encoder(device="cpu")
    for slide in cohort.slides:
        store = tile_slide(slide, root / "stores", progress=False)
        embed_store(store, EmbedConfig(device="cpu"), encoder=enc, progress=False)
    model_dir = train_model(
        root / "stores",
        cohort.labels_csv,
        root / "abmil",
        TrainConfig(folds=2, epochs=30, patience=10, lr=1e-3),
    )
    model = load_model(model_dir)
    for slide in cohort.slides:
        predict_store(root / "stores" / f"{slide.stem}.zarr", model)
    return root, cohort, model.name


@pytest.fixture
def small_disk(tmp_path: Path):
    """``small_disk(name, size="1M", read_only=False)``: a tmpfs of ``size`` mounted at
    ``tmp_path/name`` (unmounted after the test); skips where mounting is not permitted."""
    import subprocess

    mounted: list[Path] = []

    def mount(name: str, size: str = "1M", read_only: bool = False) -> Path:
        target = tmp_path / name
        target.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if read_only else "")
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): needed to fill a disk")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)


@pytest.fixture
def read_only_folder(tmp_path: Path, small_disk):
    """An existing folder nothing can be written into: chmod 555, or (as root, where chmod
    does not stop writes) a read-only tmpfs; skips where neither works."""
    import os

    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        yield folder
        folder.chmod(0o755)
        return
    folder.chmod(0o755)
    yield small_disk("read_only", read_only=True)


def fill(disk: Path, leave: int) -> None:
    """Fill the file system of ``disk`` but ``leave`` bytes."""
    import os

    vfs = os.statvfs(disk)
    free = vfs.f_bavail * vfs.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))
