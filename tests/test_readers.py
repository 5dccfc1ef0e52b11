"""Dataset readers (HER2ST, ST-Net, Visium), shared checks, gene intersection and loaders.

Each reader runs on tiny files written here in its format; every malformed input must raise
DataError naming the file. One test reads the real HER2ST subset when it is present.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from asign_jax.config import base_config
from asign_jax.data import loaders, validate
from asign_jax.data.image import read_rgb
from asign_jax.data.her2st import read_her2st
from asign_jax.data.section import Sample, Section, dense_counts
from asign_jax.data.stnet import read_stnet
from asign_jax.data.visium import read_visium
from asign_jax.errors import ConfigError, DataError
from asign_jax.stages import check_folds
from asign_jax.registration.preprocess import read_small_rgb

GENES = ["ERBB2", "GNAS", "FASN", "ACTB"]
# 6 spots on a 3 x 2 array grid
GRID = [(x, y) for y in (5, 6) for x in (10, 11, 12)]


def _write_image(path: Path, size=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*size, 3), np.uint8)
    img[:, :, 2] = 200
    assert cv2.imwrite(str(path), img)


def _counts_text(ids, genes, counts) -> str:
    lines = ["\t" + "\t".join(genes)]
    lines += [sid + "\t" + "\t".join(str(int(v)) for v in row) for sid, row in zip(ids, counts)]
    return "\n".join(lines) + "\n"


def _selection_text(grid, selected=None) -> str:
    lines = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
    for i, (x, y) in enumerate(grid):
        sel = 1 if selected is None else selected[i]
        lines.append(f"{x}\t{y}\t{x + 0.02}\t{y - 0.03}\t{100 * x + 0.5}\t{100 * y + 0.25}\t{sel}")
    return "\n".join(lines) + "\n"


def write_her2st(root: Path, name: str, *, seed=0, genes=GENES, image=True, counts_text=None,
                 selection_text=None) -> np.ndarray:
    """Writes one HER2ST-layout section; returns its (6, G) counts (rows in GRID order)."""
    counts = np.random.default_rng(seed).integers(0, 20, (len(GRID), len(genes)))
    ids = [f"{x}x{y}" for x, y in GRID]
    (root / "ST-cnts").mkdir(parents=True, exist_ok=True)
    (root / "ST-spotfiles").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "ST-cnts" / f"{name}.tsv.gz", "wt") as f:
        f.write(counts_text if counts_text is not None else _counts_text(ids, genes, counts))
    (root / "ST-spotfiles" / f"{name}_selection.tsv").write_text(
        selection_text if selection_text is not None else _selection_text(GRID))
    if image:
        _write_image(root / "ST-imgs" / name.rstrip("0123456789") / name / f"HE_{name}.jpg")
    return counts


# ---------------------------------------------------------------------------- HER2ST


def test_her2st_groups_by_patient_orders_by_number_and_keeps_values(tmp_path):
    c10 = write_her2st(tmp_path, "C10", seed=1)
    c2 = write_her2st(tmp_path, "C2", seed=2)
    write_her2st(tmp_path, "C1", seed=3, image=False)
    b4 = write_her2st(tmp_path, "B4", seed=4)

    samples = read_her2st(tmp_path)
    assert [s.sample_id for s in samples] == ["B", "C"]
    assert [x.name for x in samples[1].sections] == ["C1", "C2", "C10"]  # numeric, not lexical
    c1_sec, c2_sec, c10_sec = samples[1].sections
    assert c1_sec.image_path is None
    assert c2_sec.image_path == tmp_path / "ST-imgs" / "C" / "C2" / "HE_C2.jpg"

    sec = c10_sec
    assert sec.counts.dtype == np.float32 and sec.counts.shape == (6, 4)
    np.testing.assert_array_equal(sec.counts, c10.astype(np.float32))
    np.testing.assert_array_equal(c2_sec.counts, c2)
    np.testing.assert_array_equal(samples[0].sections[0].counts, b4)
    assert list(sec.genes) == GENES
    assert list(sec.spot_ids) == [f"{x}x{y}" for x, y in GRID]
    np.testing.assert_array_equal(sec.array_xy, np.array(GRID, float))
    np.testing.assert_allclose(sec.pixel_xy, np.array([(100 * x + 0.5, 100 * y + 0.25)
                                                       for x, y in GRID]))
    assert sec.read_image().shape == (40, 48, 3)

    # images_only skips C1 before reading it; a patient id selects all its sections
    only = read_her2st(tmp_path, ["C"], images_only=True)
    assert [(s.sample_id, [x.name for x in s.sections]) for s in only] == [("C", ["C2", "C10"])]


def test_her2st_unmatched_and_unselected_spots_are_dropped_counted_and_logged(tmp_path, caplog):
    counts = np.arange(6 * 4).reshape(6, 4)
    ids = [f"{x}x{y}" for x, y in GRID]
    ids[0] = "99x99"                                     # count row without a spot entry
    grid = GRID + [(13, 6), (14, 6)]                     # 13x6: spot without counts
    selected = [1, 1, 1, 1, 1, 0, 1, 1]                  # 12x6 not under tissue
    counts_text = _counts_text(ids, GENES, counts) + "14x6\t1\t1\t1\t1\n"
    write_her2st(tmp_path, "A1", counts_text=counts_text,
                 selection_text=_selection_text(grid, selected))
    with caplog.at_level(logging.INFO):
        (sample,) = read_her2st(tmp_path, ["A1"])
    sec = sample.sections[0]
    assert list(sec.spot_ids) == ["11x5", "12x5", "10x6", "11x6", "14x6"]
    np.testing.assert_array_equal(sec.counts[:4], counts[[1, 2, 3, 4]])
    np.testing.assert_array_equal(sec.array_xy[-1], [14, 6])
    # count rows 99x99 and 12x6 (unselected) have no spot; spots 10x5 and 13x6 have no counts
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0]
    assert "dropped 2 spot(s) of" in warning and "and 2 spot(s) of" in warning
    assert "A1.tsv.gz" in warning and "A1_selection.tsv" in warning and "5 spots kept" in warning
    assert any("1 of 8 spots" in r.getMessage() and "not selected" in r.getMessage()
               for r in caplog.records)


def _replace_line(text, i, new):
    lines = text.splitlines()
    lines[i] = new
    return "\n".join(lines) + "\n"


_IDS = [f"{x}x{y}" for x, y in GRID]
_OK_COUNTS = _counts_text(_IDS, GENES, np.ones((6, 4)))
_OK_SEL = _selection_text(GRID)

BAD_HER2ST = {
    "duplicate spot id in counts": (
        dict(counts_text=_replace_line(_OK_COUNTS, 2, "10x5\t1\t1\t1\t1")),
        "A1.tsv.gz", "duplicated spot id"),
    "duplicate spot in selection": (
        dict(selection_text=_replace_line(_OK_SEL, 2, "10\t5\t10\t5\t1\t1\t1")),
        "A1_selection.tsv", "duplicated spot id"),
    "negative count": (
        dict(counts_text=_replace_line(_OK_COUNTS, 3, "12x5\t1\t-2\t1\t1")),
        "A1.tsv.gz", "negative count(s), first at spot '12x5', gene 'GNAS'"),
    "empty cell (NaN)": (
        dict(counts_text=_replace_line(_OK_COUNTS, 1, "10x5\t1\t\t1\t1")),
        "A1.tsv.gz", "NaN"),
    "infinite count": (
        dict(counts_text=_replace_line(_OK_COUNTS, 1, "10x5\t1\tinf\t1\t1")),
        "A1.tsv.gz", "infinite"),
    "non-numeric count": (
        dict(counts_text=_replace_line(_OK_COUNTS, 1, "10x5\t1\tabc\t1\t1")),
        "A1.tsv.gz", "non-numeric counts"),
    "duplicate gene": (
        dict(counts_text=_replace_line(_OK_COUNTS, 0, "\tERBB2\tGNAS\tERBB2\tACTB")),
        "A1.tsv.gz", "duplicated gene name"),
    "ragged header": (
        dict(counts_text=_replace_line(_OK_COUNTS, 0, "\tERBB2\tGNAS")),
        "A1.tsv.gz", "header has 3 fields"),
    "no spot matches": (
        dict(selection_text=_selection_text([(x + 50, y) for x, y in GRID])),
        "A1_selection.tsv", "no spot id"),
    "most spots unmatched": (
        dict(selection_text=_selection_text(GRID[:2] + [(x + 50, y) for x, y in GRID[2:]])),
        "A1_selection.tsv", "wrong file pairing"),
    "selection lacks pixel_x": (
        dict(selection_text=_OK_SEL.replace("pixel_x", "px")),
        "A1_selection.tsv", "lacks column(s) ['pixel_x']"),
    "non-numeric pixel": (
        dict(selection_text=_replace_line(_OK_SEL, 1, "10\t5\t10\t5\tfoo\t1\t1")),
        "A1_selection.tsv", "non-numeric"),
}


@pytest.mark.parametrize("case", sorted(BAD_HER2ST))
def test_her2st_bad_input_raises_data_error_naming_the_file(tmp_path, case):
    kwargs, fname, problem = BAD_HER2ST[case]
    write_her2st(tmp_path, "A1", **kwargs)
    with pytest.raises(DataError) as e:
        read_her2st(tmp_path, ["A1"])
    assert fname in str(e.value) and problem in str(e.value), str(e.value)


def test_her2st_missing_or_corrupt_files_raise_data_error(tmp_path):
    write_her2st(tmp_path, "A1")
    with pytest.raises(DataError, match=r"A2\.tsv\.gz: count table does not exist"):
        read_her2st(tmp_path, ["A1", "A2"])
    (tmp_path / "ST-cnts" / "A1.tsv.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match=r"A1\.tsv\.gz: cannot read count table"):
        read_her2st(tmp_path, ["A1"])
    write_her2st(tmp_path, "A1")
    (tmp_path / "ST-spotfiles" / "A1_selection.tsv").unlink()
    with pytest.raises(DataError, match=r"A1_selection\.tsv: spot selection file does not"):
        read_her2st(tmp_path, ["A1"])
    with pytest.raises(DataError, match="patient letter"):
        read_her2st(tmp_path, ["A-1"])
    write_her2st(tmp_path, "A1")
    _write_image(tmp_path / "ST-imgs" / "A" / "A1" / "other.png")
    with pytest.raises(DataError, match=r"A1: 2 image files"):
        read_her2st(tmp_path, ["A1"])
    with pytest.raises(DataError, match=r"nowhere/ST-cnts: HER2ST count folder does not exist"):
        read_her2st(tmp_path / "nowhere")


def test_image_missing_or_unreadable_raises_data_error(tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(DataError, match=r"gone\.jpg: image file of section 'A1' does not"):
        validate.check_image(missing, "A1")
    validate.check_image(None, "A1")  # no image is allowed
    with pytest.raises(DataError, match=r"gone\.jpg: image file"):
        validate.make_section("A1", missing, ["1x1"], [[1, 1]], [[5, 5]], [[1.0]], ["G"],
                              source="x")
    write_her2st(tmp_path, "A1")
    jpg = tmp_path / "ST-imgs" / "A" / "A1" / "HE_A1.jpg"
    jpg.write_bytes(b"this is not a jpeg")
    (sample,) = read_her2st(tmp_path, ["A1"])
    with pytest.raises(DataError, match=r"HE_A1\.jpg: cannot decode image"):
        sample.sections[0].read_image()


def _noise_image(path: Path, size=(160, 200), **kw) -> Path:
    rgb = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, **kw)
    return path


@pytest.mark.parametrize("suffix,marker", [(".jpg", "truncated JPEG"), (".png", "truncated PNG")])
def test_truncated_image_is_an_error_naming_the_file(tmp_path, suffix, marker):
    """60% of the file kept: OpenCV decodes the JPEG anyway (libjpeg warns on stderr and
    fills flat grey); the reader and the registration's reader refuse it."""
    path = _noise_image(tmp_path / f"C3{suffix}")
    full = read_rgb(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(0.6 * len(data))])
    if suffix == ".jpg":                            # the failure replayed: a grey, "valid" image
        grey = cv2.imread(str(path))
        assert grey is not None and grey.shape == full.shape
    for read in (read_rgb, lambda p: read_small_rgb(p, 64)):
        with pytest.raises(DataError) as e:
            read(path)
        assert str(e.value).startswith(f"{path}: {marker} ({int(0.6 * len(data))} bytes")
    path.write_bytes(data + b"\0" * 16)           # trailing padding after the end marker is fine
    np.testing.assert_array_equal(read_rgb(path), full)


def test_decoded_size_must_match_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                # "rotate 90": OpenCV applies it, PIL not
    path = _noise_image(tmp_path / "rot.jpg", exif=exif.tobytes())
    with pytest.raises(DataError, match=r"rot\.jpg: decoded size \(200, 160\) differs from the "
                                        r"header's \(160, 200\)"):
        read_rgb(path)


# ---------------------------------------------------------------------------- ST-Net

ENSG = ["ENSG00000141736", "ENSG00000087460", "ENSG00000169710+ENSG00000075624"]


def write_stnet(root: Path, subtype: str, patient: str, section: str, *, seed=0, image=True,
                spots_header="x\ty\tpixel_x\tpixel_y") -> np.ndarray:
    d = root / subtype / patient
    d.mkdir(parents=True, exist_ok=True)
    stem = f"{patient}_{section}"
    counts = np.random.default_rng(seed).integers(0, 9, (len(GRID), len(ENSG)))
    ids = [f"{x}x{y}" for x, y in GRID]
    with gzip.open(d / f"{stem}.tsv.gz", "wt") as f:
        f.write(_counts_text(ids, ENSG, counts))
    lines = [spots_header] + [f"{x}\t{y}\t{30.5 * x}\t{40.0 * y}" for x, y in GRID[::-1]]
    (d / f"{stem}.spots.txt").write_text("\n".join(lines) + "\n")
    if image:
        _write_image(d / f"{stem}.jpg")
    return counts


def test_stnet_reads_patients_sections_and_joined_gene_names(tmp_path):
    d1 = write_stnet(tmp_path, "HER2_luminal", "BC23450", "D2", seed=1)
    c1 = write_stnet(tmp_path, "HER2_luminal", "BC23450", "C1", seed=2, image=False)
    e1 = write_stnet(tmp_path, "TNBC", "BC23209", "E1", seed=3)
    samples = read_stnet(tmp_path)
    assert [(s.sample_id, [x.name for x in s.sections]) for s in samples] == [
        ("BC23209", ["BC23209_E1"]), ("BC23450", ["BC23450_C1", "BC23450_D2"])]
    c1_sec, d2 = samples[1].sections
    assert list(d2.genes) == ENSG  # the '+'-joined name stays one gene
    np.testing.assert_array_equal(d2.counts, d1)
    np.testing.assert_array_equal(c1_sec.counts, c1)
    np.testing.assert_array_equal(samples[0].sections[0].counts, e1)
    assert c1_sec.image_path is None and d2.image_path.name == "BC23450_D2.jpg"
    # spots.txt rows are reversed: the join must follow the spot ids
    np.testing.assert_array_equal(d2.array_xy, np.array(GRID, float))
    np.testing.assert_allclose(d2.pixel_xy, [(30.5 * x, 40.0 * y) for x, y in GRID])

    only = read_stnet(tmp_path, ["BC23450"], images_only=True)
    assert [x.name for s in only for x in s.sections] == ["BC23450_D2"]
    assert [x.name for s in read_stnet(tmp_path, ["BC23209_E1"]) for x in s.sections] == [
        "BC23209_E1"]
    with pytest.raises(DataError, match="no ST-Net section or patient 'BC1'"):
        read_stnet(tmp_path, ["BC1"])


def test_stnet_bad_input_raises_data_error(tmp_path):
    write_stnet(tmp_path, "TNBC", "BC1", "C1", spots_header="x\ty\tpx\tpy")
    with pytest.raises(DataError, match=r"BC1_C1\.spots\.txt: spot file lacks column"):
        read_stnet(tmp_path)
    write_stnet(tmp_path, "TNBC", "BC1", "C1")
    (tmp_path / "TNBC" / "BC1" / "BC1_C1.spots.txt").unlink()
    with pytest.raises(DataError, match=r"BC1_C1\.spots\.txt: spot file does not exist"):
        read_stnet(tmp_path)
    write_stnet(tmp_path, "TNBC", "BC1", "C1")
    write_stnet(tmp_path, "Luminal_A", "BC1", "D1")
    with pytest.raises(DataError, match="patient 'BC1' appears under two subtype folders"):
        read_stnet(tmp_path)
    with pytest.raises(DataError, match="no ST-Net count file"):
        read_stnet(tmp_path / "TNBC")


# ---------------------------------------------------------------------------- Visium

BARCODES = [f"AAAC{i}-1" for i in range(5)]
FEATURES = [("ENSG1", "GENE_A", "Gene Expression"), ("ENSG2", "GENE_B", "Gene Expression"),
            ("ENSG3", "GENE_A", "Gene Expression"), ("ADT1", "CD3", "Antibody Capture")]


def _write_h5(path: Path, dense: np.ndarray, barcodes, features, drop=None) -> None:
    """dense: (features, barcodes); written as 10x CSC."""
    import scipy.sparse as sp

    m = sp.csc_matrix(dense)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        items = dict(data=m.data.astype(np.int32), indices=m.indices, indptr=m.indptr,
                     shape=np.array(dense.shape), barcodes=np.array(barcodes, dtype="S"))
        for k, v in items.items():
            if k != drop:
                g.create_dataset(k, data=v)
        fg = g.create_group("features")
        for j, k in enumerate(("id", "name", "feature_type")):
            fg.create_dataset(k, data=np.array([ft[j] for ft in features], dtype="S"))


def write_visium(section_dir: Path, *, seed=0, header=False, image="full", drop=None):
    """Returns the (5 barcodes, 4 features) counts written."""
    spatial = section_dir / "spatial"
    spatial.mkdir(parents=True)
    dense = np.random.default_rng(seed).integers(0, 7, (len(FEATURES), len(BARCODES)))
    _write_h5(section_dir / "filtered_feature_bc_matrix.h5", dense, BARCODES, FEATURES, drop)
    # barcode, in_tissue, array_row, array_col, pxl_row, pxl_col; positions list the
    # barcodes in reverse, plus one off-tissue spot and one in-tissue spot the matrix lacks
    rows = [f"{b},1,{i},{2 * i},{1000 + 10 * i},{2000 + 20 * i}"
            for i, b in reversed(list(enumerate(BARCODES)))]
    rows += ["TTTT-1,0,9,9,9,9", "GGGG-1,1,8,8,8,8"]
    if header:
        rows.insert(0, "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,"
                       "pxl_col_in_fullres")
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    (spatial / name).write_text("\n".join(rows) + "\n")
    (spatial / "scalefactors_json.json").write_text(json.dumps(
        {"tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.075,
         "spot_diameter_fullres": 96.0, "fiducial_diameter_fullres": 150.0}))
    if image == "full":
        _write_image(section_dir / f"{section_dir.name}_full_image.tif")
    elif image == "hires":
        _write_image(spatial / "tissue_hires_image.png")
    return dense.T


def test_visium_reads_in_tissue_spots_genes_and_images(tmp_path, caplog):
    full = write_visium(tmp_path / "151507", seed=1)
    hires = write_visium(tmp_path / "151508", seed=2, header=True, image="hires")
    write_visium(tmp_path / "151509", seed=3, image=None)
    with caplog.at_level(logging.INFO):
        samples = read_visium(tmp_path, {"Br1": ["151508", "151507"], "Br2": ["151509"]})
    assert [(s.sample_id, [x.name for x in s.sections]) for s in samples] == [
        ("Br1", ["151508", "151507"]), ("Br2", ["151509"])]
    s08, s07 = samples[0].sections
    assert list(s07.genes) == ["GENE_A", "GENE_B", "GENE_A-1"]  # antibody feature dropped
    assert list(s07.spot_ids) == BARCODES  # GGGG-1 (no counts), TTTT-1 (off tissue) dropped
    assert sp.isspmatrix_csr(s07.counts)                 # kept sparse until genes are chosen
    np.testing.assert_array_equal(dense_counts(s07.counts), full[:, :3])
    np.testing.assert_array_equal(dense_counts(s08.counts), hires[:, :3])
    i = np.arange(5)
    np.testing.assert_array_equal(s07.array_xy, np.stack([2 * i, i], 1))
    np.testing.assert_array_equal(s07.pixel_xy, np.stack([2000 + 20 * i, 1000 + 10 * i], 1))
    assert s07.image_path.name == "151507_full_image.tif"
    assert s08.image_path.name == "tissue_hires_image.png"
    np.testing.assert_allclose(s08.pixel_xy, 0.25 * np.stack([2000 + 20 * i, 1000 + 10 * i], 1))
    assert samples[1].sections[0].image_path is None
    assert any("tissue_hires_scalef=0.25" in r.getMessage() for r in caplog.records)
    assert any("dropped 0 spot(s)" in r.getMessage() and "and 1 spot(s)" in r.getMessage()
               for r in caplog.records)

    only = read_visium(tmp_path, {"Br1": ["151508", "151507"], "Br2": ["151509"]},
                       images_only=True)
    assert [s.sample_id for s in only] == ["Br1"]
    # a custom glob: the full-res .tif no longer matches, so 151507 falls back to nothing
    (s,) = read_visium(tmp_path, {"X": ["151507"]}, image_globs=("*.jpg",))
    assert s.sections[0].image_path is None


def test_visium_bad_input_raises_data_error(tmp_path):
    write_visium(tmp_path / "a", drop="indptr")
    with pytest.raises(DataError, match=r"a/filtered_feature_bc_matrix\.h5: matrix lacks "
                                        r"\['indptr'\]"):
        read_visium(tmp_path, {"A": ["a"]})
    write_visium(tmp_path / "b")
    (tmp_path / "b" / "spatial" / "tissue_positions_list.csv").write_text("x,1,2,3,4\n")
    with pytest.raises(DataError, match=r"tissue_positions_list\.csv: expected 6 columns"):
        read_visium(tmp_path, {"B": ["b"]})
    write_visium(tmp_path / "c")
    _write_image(tmp_path / "c" / "spatial" / "other.tif")
    with pytest.raises(DataError, match=r"c: image glob '\*\.tif' matches 2 files"):
        read_visium(tmp_path, {"C": ["c"]}, image_globs=("*.tif",))
    with pytest.raises(DataError, match=r"missing: Visium section folder of sample 'D'"):
        read_visium(tmp_path, {"D": ["missing"]})
    write_visium(tmp_path / "e")
    (tmp_path / "e" / "filtered_feature_bc_matrix.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"e/filtered_feature_bc_matrix\.h5: cannot read 10x"):
        read_visium(tmp_path, {"E": ["e"]})


# ---------------------------------------------------------------------------- shared


def test_count_table_with_r_style_header(tmp_path):
    # write.table(sep="\t") omits the header field of the row-name column
    path = tmp_path / "counts.tsv"
    path.write_text("G1\tG2+G3\n1x2\t4\t0\n3x4\t1.5\t2\n")
    ids, genes, counts = validate.read_count_table(path)
    assert ids.tolist() == ["1x2", "3x4"] and genes.tolist() == ["G1", "G2+G3"]
    np.testing.assert_array_equal(counts, np.array([[4, 0], [1.5, 2]], np.float32))
    assert counts.dtype == np.float32


def _section(name, genes, n=3, value=1.0):
    return Section(name=name, image_path=None, spot_ids=np.array([f"s{i}" for i in range(n)]),
                   array_xy=np.zeros((n, 2)), pixel_xy=np.zeros((n, 2)),
                   counts=np.arange(n * len(genes), dtype=np.float32).reshape(n, -1) * value,
                   genes=np.array(genes))


def test_intersect_genes_keeps_shared_genes_in_first_section_order(caplog):
    a = _section("A1", ["G1", "G2", "G3", "G4"])
    b = _section("A2", ["G4", "G9", "G2", "G1"])
    c = _section("B1", ["G2", "G1", "G4"])
    with caplog.at_level(logging.INFO):
        out = validate.intersect_genes([Sample("A", [a, b]), Sample("B", [c])])
    assert [s.sample_id for s in out] == ["A", "B"]
    for s in (x for sample in out for x in sample.sections):
        assert list(s.genes) == ["G1", "G2", "G4"]
    np.testing.assert_array_equal(out[0].sections[1].counts, b.counts[:, [3, 2, 0]])
    np.testing.assert_array_equal(out[1].sections[0].counts, c.counts[:, [1, 0, 2]])
    msgs = [r.getMessage() for r in caplog.records]
    assert "section A1: dropped 1 of 4 genes not present in every section" in msgs
    assert "section A2: dropped 1 of 4 genes not present in every section" in msgs
    assert not any(m.startswith("section B1: dropped") for m in msgs)
    with pytest.raises(DataError, match="no gene is shared"):
        validate.intersect_genes([Sample("A", [a]), Sample("C", [_section("C1", ["X"])])])


def test_single_section_sample_is_2d_only():
    sample = Sample("B", [_section("B4", ["G1"])])
    assert validate.intersect_genes([sample])[0].n_layers == 1  # allowed for 2D use
    with pytest.raises(DataError, match=r"sample 'B' has a single section \(\['B4'\]\); 3D use"):
        sample.require_3d()
    Sample("C", [_section("C2", ["G1"]), _section("C3", ["G1"])]).require_3d()


# ---------------------------------------------------------------------------- loaders


def test_parse_section_specs():
    assert loaders.parse_section_list("") is None
    assert loaders.parse_section_list(" C2, C3 ,B4") == ["C2", "C3", "B4"]
    assert loaders.parse_section_groups("A:151507,151508 ; B:151669") == {
        "A": ["151507", "151508"], "B": ["151669"]}
    assert loaders.parse_section_groups("") is None
    for bad in ("A:1,2;A:3", "A:1;B:1", "A:", "151507,151508", ":1"):
        with pytest.raises(ConfigError, match="data.sections"):
            loaders.parse_section_groups(bad)
    for bad in ("C2,,C3", "A:1,2"):
        with pytest.raises(ConfigError, match="data.sections"):
            loaders.parse_section_list(bad)


def _config(fmt, root, sections=""):
    c = base_config()
    c.data.format, c.data.root, c.data.sections = fmt, str(root), sections
    return c


def test_load_samples_her2st_and_synthetic(tmp_path, caplog):
    write_her2st(tmp_path, "C2", seed=1)
    write_her2st(tmp_path, "C3", seed=2, genes=GENES + ["EXTRA"])
    write_her2st(tmp_path, "C1", image=False)
    write_her2st(tmp_path, "B4")
    with caplog.at_level(logging.INFO):
        samples = loaders.load_samples(_config("her2st", tmp_path))
    assert [(s.sample_id, [x.name for x in s.sections]) for s in samples] == [
        ("B", ["B4"]), ("C", ["C2", "C3"])]  # C1 has no image: left out
    assert all(list(x.genes) == GENES for s in samples for x in s.sections)
    assert any(re.search(r"sample C section C3: 6 spots x 4 genes, image .*HE_C3\.jpg",
                         r.getMessage()) for r in caplog.records)

    counts = loaders.load_samples(_config("synthetic", tmp_path, "C1,C2"), counts_only=True)
    assert [x.name for x in counts[0].sections] == ["C1", "C2"]
    assert counts[0].sections[0].image_path is None

    c = _config("her2st", tmp_path, "C2")
    c.data.min_section_spots = 7
    with pytest.raises(DataError, match=r"min_section_spots=7 matched spots: C2 \(6\)"):
        loaders.load_samples(c)
    with pytest.raises(DataError, match="no her2st section left"):
        loaders.load_samples(_config("her2st", tmp_path, "C1"))
    with pytest.raises(ConfigError, match="data.format='csv'"):
        loaders.load_samples(_config("csv", tmp_path))
    with pytest.raises(ConfigError, match="data.root is empty"):
        loaders.load_samples(_config("her2st", ""))


def test_a_section_left_out_is_named_in_the_later_error(tmp_path):
    """C3's image is missing: C keeps one layer, and the fold error says why."""
    write_her2st(tmp_path, "C2")
    write_her2st(tmp_path, "C3", image=False)
    write_her2st(tmp_path, "B4")
    c = _config("her2st", tmp_path, "C2,C3,B4")
    c.train.folds = (("C",),)
    samples = loaders.load_samples(c)
    assert {s.sample_id: s.left_out for s in samples} == {
        "B": {}, "C": {"C3": f"no image in {tmp_path / 'ST-imgs' / 'C' / 'C3'}"}}
    with pytest.raises(ConfigError) as e:
        check_folds(c, {s.sample_id: s.n_layers for s in samples},
                    {s.sample_id: s.left_out for s in samples})
    assert str(e.value) == ("train.folds: sample 'C' has 1 layer(s); a held-out sample needs a "
                            "known layer and >= 1 test layer (sections left out when reading: "
                            f"C3 (no image in {tmp_path / 'ST-imgs' / 'C' / 'C3'}))")


def test_load_samples_visium_and_stnet(tmp_path):
    write_visium(tmp_path / "v" / "151507", seed=1)
    write_visium(tmp_path / "v" / "151508", seed=2)
    (s,) = loaders.load_samples(_config("visium", tmp_path / "v", "Br:151508,151507"))
    assert s.sample_id == "Br" and [x.name for x in s.sections] == ["151508", "151507"]
    # "" = every section folder, each its own sample
    assert [x.sample_id for x in loaders.load_samples(_config("visium", tmp_path / "v"))] == [
        "151507", "151508"]
    c = _config("visium", tmp_path / "v", "Br:151507")
    c.data.image_glob = "*.png"
    with pytest.raises(DataError, match="no visium section left"):
        loaders.load_samples(c)

    write_stnet(tmp_path / "s", "TNBC", "BC1", "C1")
    write_stnet(tmp_path / "s", "TNBC", "BC1", "D1")
    (s,) = loaders.load_samples(_config("stnet", tmp_path / "s", "BC1"))
    assert [x.name for x in s.sections] == ["BC1_C1", "BC1_D1"]


# ---------------------------------------------------------------------------- real data

REAL_SPOTS = {"C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178, "B4": 283}


@pytest.mark.realdata
def test_real_her2st_spot_counts(her2st_root):
    samples = read_her2st(her2st_root, list(REAL_SPOTS))
    got = {x.name: x.n_spots for s in samples for x in s.sections}
    assert got == REAL_SPOTS
    assert [(s.sample_id, [x.name for x in s.sections]) for s in samples] == [
        ("B", ["B4"]), ("C", ["C2", "C3", "C4", "C5", "C6"])]
    c3 = samples[1].sections[1]
    assert c3.genes[:3].tolist() == ["FO538757.1", "SAMD11", "NOC2L"] and len(c3.genes) == 15821
    i = c3.spot_ids.tolist().index("22x5")  # first row of C3_selection.tsv
    np.testing.assert_allclose(c3.pixel_xy[i], [6066.06, 1159.01])
    np.testing.assert_array_equal(c3.array_xy[i], [22, 5])
    assert c3.image_path.name == "5714_HE_BT_D1.jpg"
    assert all(x.has_image for s in samples for x in s.sections)
