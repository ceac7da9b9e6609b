"""Readers and writers of IR spectroscopic images, RGB images and label maps, in real formats.

A hyperspectral cube is (height, width, bands) float32 with its wavenumber axis (cm^-1,
strictly monotonic, one value a band):

  * ENVI: a text header `name.hdr` beside the binary `name.img` (or `name`, `name.raw`,
    `name.dat`): `samples`, `lines`, `bands`, `data type`, `interleave` (bsq, bil, bip),
    `byte order`, `header offset`, and the band centres in `wavelength` (or `wavenumber`),
  * NumPy: `.npy` (the cube alone; wavenumbers from a `.wavenumbers.npy` beside it) or `.npz`
    with arrays `cube` and `wavenumbers`,
  * MATLAB `.mat` (scipy.io, v5/v7): variables `cube` (or the only 3D array) and `wavenumbers`,

and a table of single spectra (`read_spectra_table`) is

  * a CSV (or tab-separated `.tab`/`.tsv`) with one spectrum a row, the wavenumbers as
    column names and a label column; or Orange's format, the same with two more header
    rows: variable types (`c`/`continuous`, `d`/`discrete`, `s`/`string`, ...) and flags
    (`class`, `meta`, `ignore`, ...; the label column is the one flagged `class`),
  * NumPy `.npz` with arrays `X` (spectra, N x bands), `y` (labels) and `wavenumbers`;

a table may be read in place from inside a zip archive or wheel, named as if the archive
were a folder (`pkg-1.0-py3-none-any.whl/pkg/data/table.csv`). RGB images (PNG/TIFF) and
label maps (PNG/TIFF/.npy of class indices) are read with scikit-image's imageio plugin.
Every reader raises `InputError` naming the file and the problem: a missing file, a header
without a needed key, a file shorter than its header claims, a non-monotonic wavenumber
axis, a missing label column, a spectrum with a missing (NaN) or non-numeric value, a
spectrum without a label (empty, or a missing-value text: NaN, NA, ?).
Writers write to a temporary name and rename, so no half-written file is left.
"""

import contextlib
import csv
import io
import itertools
import pathlib
import zipfile

import numpy as np

from sciimg_jax.core import atomic_files
from sciimg_jax.core.errors import InputError

# ENVI `data type` codes and the NumPy types they stand for.
ENVI_DTYPES = {1: np.uint8, 2: np.int16, 3: np.int32, 4: np.float32, 5: np.float64,
               12: np.uint16, 13: np.uint32, 14: np.int64, 15: np.uint64}
ENVI_CODES = {np.dtype(v): k for k, v in ENVI_DTYPES.items()}
ENVI_DATA_SUFFIXES = (".img", "", ".raw", ".dat", ".bsq", ".bil", ".bip")


def check_wavenumbers(wavenumbers, bands, where):
  """The wavenumber axis as float32 (bands,); InputError unless strictly monotonic."""
  w = np.asarray(wavenumbers, np.float64).reshape(-1)
  if w.size != bands:
    raise InputError(where, f"{w.size} wavenumbers for {bands} bands")
  if not np.all(np.isfinite(w)):
    raise InputError(where, "the wavenumber axis holds NaN or infinite values")
  d = np.diff(w)
  if w.size > 1 and not (np.all(d > 0) or np.all(d < 0)):
    k = int(np.flatnonzero(np.sign(d) != np.sign(d[0]))[0]) if np.any(d) else 0
    raise InputError(where, f"the wavenumber axis is not strictly monotonic "
                     f"(at band {k + 1}: {w[k]:g} then {w[k + 1]:g})")
  return w.astype(np.float32)


def _exists(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(path, "no such file")
  return path


# --- ENVI ----------------------------------------------------------------------------------

def parse_envi_header(path):
  """The ENVI header as a dict of lower-case keys; `{...}` values as lists of strings."""
  path = _exists(path)
  text = path.read_text(errors="replace")
  if not text.lstrip().upper().startswith("ENVI"):
    raise InputError(path, "not an ENVI header (the first line must be 'ENVI')")
  fields, key, buf = {}, None, None
  for line in text.splitlines()[1:]:
    if buf is not None:
      buf += " " + line
      if "}" in line:
        fields[key] = buf
        buf = None
      continue
    if "=" not in line:
      continue
    key, value = (s.strip() for s in line.split("=", 1))
    key = key.lower()
    if value.startswith("{") and "}" not in value:
      buf = value
    else:
      fields[key] = value
  if buf is not None:
    raise InputError(path, f"header field '{key}' has no closing brace")
  return {k: ([s.strip() for s in v.strip()[1:-1].split(",") if s.strip()]
              if v.strip().startswith("{") else v) for k, v in fields.items()}


def read_envi(path):
  """(cube (H, W, bands) float32, wavenumbers) from an ENVI header and its binary file."""
  path = _exists(path)
  h = parse_envi_header(path)
  for key in ("samples", "lines", "bands", "data type"):
    if key not in h:
      raise InputError(path, f"header has no '{key}'")
  try:
    samples, lines, bands = int(h["samples"]), int(h["lines"]), int(h["bands"])
    dtype = np.dtype(ENVI_DTYPES[int(h["data type"])])
  except (ValueError, KeyError):
    raise InputError(path, f"bad 'samples', 'lines', 'bands' or 'data type' in the header "
                     f"({h.get('data type')!r} is not one of {sorted(ENVI_DTYPES)})") from None
  if int(h.get("byte order", 0)):
    dtype = dtype.newbyteorder(">")
  interleave = h.get("interleave", "bsq").lower()
  if interleave not in ("bsq", "bil", "bip"):
    raise InputError(path, f"unknown interleave {interleave!r}; known: bsq, bil, bip")
  data = next((p for p in (path.with_suffix(s) for s in ENVI_DATA_SUFFIXES)
               if p != path and p.is_file()), None)
  if data is None:
    raise InputError(path, "no binary file beside the header (looked for "
                     + ", ".join(path.with_suffix(s).name for s in ENVI_DATA_SUFFIXES if s) + ")")
  count = samples * lines * bands
  offset = int(h.get("header offset", 0))
  if data.stat().st_size < offset + count * dtype.itemsize:
    raise InputError(data, f"holds {data.stat().st_size} bytes; the header claims "
                     f"{lines}x{samples}x{bands} {dtype.name} values after {offset} bytes")
  raw = np.fromfile(data, dtype=dtype, count=count, offset=offset)
  shape = {"bsq": (bands, lines, samples), "bil": (lines, bands, samples),
           "bip": (lines, samples, bands)}[interleave]
  order = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
  cube = raw.reshape(shape).transpose(order).astype(np.float32)
  axis = h.get("wavenumber", h.get("wavelength"))
  if axis is None:
    raise InputError(path, "header has no 'wavelength' (or 'wavenumber') band centres")
  try:
    axis = [float(v) for v in axis]
  except ValueError:
    raise InputError(path, "the 'wavelength' values are not numbers") from None
  return cube, check_wavenumbers(axis, bands, path)


def write_envi(path, cube, wavenumbers, interleave="bsq"):
  """Writes `path` (.hdr) and its `.img`: float32, little-endian, wavenumbers in the header."""
  path = pathlib.Path(path).with_suffix(".hdr")
  cube = np.asarray(cube, np.float32)
  lines, samples, bands = cube.shape
  order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
  with atomic_files.atomic_path(path.with_suffix(".img")) as tmp:
    np.ascontiguousarray(cube.transpose(order)).astype("<f4").tofile(tmp)
  header = ["ENVI", f"samples = {samples}", f"lines = {lines}", f"bands = {bands}",
            "header offset = 0", "file type = ENVI Standard",
            f"data type = {ENVI_CODES[np.dtype(np.float32)]}", f"interleave = {interleave}",
            "byte order = 0", "wavelength units = cm-1",
            "wavelength = {" + ", ".join(f"{w:.4f}" for w in wavenumbers) + "}"]
  atomic_files.write_text(path, "\n".join(header) + "\n")
  return path


# --- NumPy and MATLAB ----------------------------------------------------------------------

def _cube_array(cube, where):
  cube = np.asarray(cube)
  if cube.ndim != 3:
    raise InputError(where, f"the cube has shape {cube.shape}; expected (height, width, bands)")
  return cube.astype(np.float32)


def read_numpy(path):
  """(cube, wavenumbers) from `.npz` (arrays cube, wavenumbers) or `.npy` + `.wavenumbers.npy`."""
  path = _exists(path)
  if path.suffix == ".npz":
    with np.load(path) as z:
      missing = [k for k in ("cube", "wavenumbers") if k not in z.files]
      if missing:
        raise InputError(path, f"has no array {missing}; it holds {z.files}")
      cube, w = _cube_array(z["cube"], path), z["wavenumbers"]
  else:
    cube = _cube_array(np.load(path), path)
    side = path.with_suffix(".wavenumbers.npy")
    if not side.is_file():
      raise InputError(path, f"no wavenumber axis: {side.name} is missing")
    w = np.load(side)
  return cube, check_wavenumbers(w, cube.shape[-1], path)


def read_mat(path):
  """(cube, wavenumbers) from a MATLAB file: `cube` (or its one 3D array) and `wavenumbers`."""
  from scipy import io as sio  # noqa: PLC0415
  path = _exists(path)
  try:
    m = {k: v for k, v in sio.loadmat(path).items() if not k.startswith("__")}
  except (ValueError, NotImplementedError, OSError) as e:
    raise InputError(path, f"cannot read as a MATLAB file ({e}); v7.3 files are HDF5") from None
  cubes = [k for k, v in m.items() if np.ndim(v) == 3]
  key = "cube" if "cube" in m else (cubes[0] if len(cubes) == 1 else None)
  if key is None:
    raise InputError(path, f"no variable 'cube' and {len(cubes)} 3D arrays ({cubes})")
  w = next((m[k] for k in ("wavenumbers", "wavenumber", "wn") if k in m), None)
  if w is None:
    raise InputError(path, f"no variable 'wavenumbers'; it holds {sorted(m)}")
  cube = _cube_array(m[key], path)
  return cube, check_wavenumbers(w, cube.shape[-1], path)


READERS = {".hdr": read_envi, ".npz": read_numpy, ".npy": read_numpy, ".mat": read_mat}
CUBE_SUFFIXES = tuple(READERS)


def read_cube(path):
  """(cube, wavenumbers) by the file's suffix: .hdr (ENVI), .npz, .npy or .mat."""
  path = pathlib.Path(path)
  if path.suffix not in READERS:
    raise InputError(path, f"unknown cube format {path.suffix!r}; known: {', '.join(READERS)}")
  return READERS[path.suffix](path)


# --- spectra tables, RGB images, label maps ------------------------------------------------

ARCHIVE_SUFFIXES = (".whl", ".zip")
TABLE_SUFFIXES = (".csv", ".tab", ".tsv", ".txt", ".npz")
# Orange's second and third header rows: variable types and column flags (Orange.data.io_base).
ORANGE_TYPES = ("", "c", "continuous", "n", "numeric", "d", "discrete", "categorical", "s",
                "string", "text", "t", "time")
ORANGE_FLAGS = ("class", "c", "meta", "m", "ignore", "i", "weight", "w")
MISSING = ("", "?", "~", "nan", "na", "n/a")  # cells that stand for a missing value


def in_archive(path):
  """(archive, member) when `path` runs through a zip or wheel file, else None."""
  path = pathlib.Path(path)
  for parent in path.parents:
    if parent.suffix in ARCHIVE_SUFFIXES and parent.is_file():
      return parent, path.relative_to(parent).as_posix()
  return None


def read_bytes(path):
  """The bytes of a file, or of a member of a zip archive named as if it were a folder."""
  with open_binary(path) as f:
    return f.read()


@contextlib.contextmanager
def open_binary(path):
  """A binary stream of a file, or of a member of a zip archive named as if it were a folder."""
  inside = in_archive(path)
  if inside is None:
    with open(_exists(path), "rb") as f:
      yield f
    return
  archive, member = inside
  try:
    z = zipfile.ZipFile(archive)
  except zipfile.BadZipFile:
    raise InputError(archive, "is not a zip archive") from None
  with z:
    try:
      f = z.open(member)
    except KeyError:
      raise InputError(path, f"no such file in {archive.name}") from None
    with f:
      yield f


def count_lines(path):
  """How many lines `path` holds (the last one with or without its line break): at least
  the number of CSV records, read in 1 MiB blocks (old Mac files: their CRs)."""
  lf = cr = 0
  last = b"\n"
  with open_binary(path) as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      lf, cr, last = lf + block.count(b"\n"), cr + block.count(b"\r"), block[-1:]
  return (lf or cr) + (last not in b"\r\n")


def _orange_header(rows):
  """(types, flags) per column when rows 2 and 3 are Orange's type and flag rows, else None."""
  if len(rows) < 3:
    return None
  is_type = lambda cell: cell.strip() in ORANGE_TYPES or len(cell.split()) > 1  # or d's values
  is_flags = lambda cell: all(f in ORANGE_FLAGS or "=" in f for f in cell.split())
  if not (all(map(is_type, rows[1])) and all(map(is_flags, rows[2]))):
    return None
  pad = lambda row: [c.strip() for c in row] + [""] * (len(rows[0]) - len(row))
  return pad(rows[1]), [set(c.split()) for c in pad(rows[2])]


def _value(cell, n, w, path):
  """A band's value from its cell; InputError for a missing or non-numeric one."""
  try:
    v = float(cell)
  except ValueError:
    v = None
  if cell.strip().lower() in MISSING or (v is not None and not np.isfinite(v)):
    raise InputError(path, f"line {n}: the spectrum has no value (NaN) at {w:g} cm^-1; "
                     "every spectrum must be complete")
  if v is None:
    raise InputError(path, f"line {n}: {cell.strip()!r} at {w:g} cm^-1 is not a number")
  return v


def _missing(cell):
  return cell.strip().lower() in MISSING


def _label(cell, n, label_column, path):
  """A row's label; InputError when it is empty or a missing-value text (NaN, ?, NA, ...)."""
  label = cell.strip()
  if not label:
    raise InputError(path, f"line {n} has no label ('{label_column}' is empty)")
  if _missing(label):
    raise InputError(path, f"line {n} has no label ('{label_column}' is {label!r}, which "
                     "stands for a missing value)")
  return label


def _row_values(row, cols, w, n, path):
  """The floats of a row's band cells; InputError naming the first missing or non-numeric."""
  try:
    return [float(row[i]) for i in cols]
  except ValueError:
    return [_value(row[i], n, wn, path) for i, wn in zip(cols, w)]


def _nonfinite(row, cols, w, n, path):
  """InputError for the first cell of a row that is not finite in float32: a NaN or
  infinite value, or a number beyond float32's range."""
  for i, wn in zip(cols, w):
    if not np.isfinite(np.float32(_value(row[i], n, wn, path))):
      raise InputError(path, f"line {n}: {row[i].strip()} at {wn:g} cm^-1 is beyond the range "
                       "of float32")


def read_spectra_csv(path, label_column=None):
  """(spectra (N, bands) float32, wavenumbers, labels (N,) str) from a CSV or Orange table.

  Columns: the label column and one column a wavenumber (its name a number); other columns
  (an id, coordinates, Orange `meta` or `ignore` columns) are ignored. `label_column=None`
  takes Orange's `class` column, or `label`. Tab-separated for `.tab`/`.tsv`/`.txt`.

  Streamed: a first pass counts the lines, the second parses one row at a time into a
  float32 array of that many rows, so the peak memory is the result and the labels (not the
  text, its rows of strings and lists of floats: 30 times the result).
  """
  delimiter = "\t" if pathlib.Path(path).suffix in (".tab", ".tsv", ".txt") else ","
  try:
    capacity = count_lines(path)
    with open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig",
                                                   newline="") as text:
      reader = csv.reader(text, delimiter=delimiter)
      try:
        return _parse_spectra(reader, path, label_column, capacity)
      except csv.Error as e:
        raise InputError(path, f"line {reader.line_num}: {e}") from None
  except UnicodeDecodeError:
    raise InputError(path, "is not UTF-8 text") from None


def _parse_spectra(reader, path, label_column, capacity):
  head = list(itertools.islice(reader, 3))  # Orange's header is 3 rows
  if not head:
    raise InputError(path, "is empty")
  header = [h.strip() for h in head[0]]
  orange = _orange_header(head)
  types, flags = orange or ([""] * len(header), [set()] * len(header))
  if label_column is None and orange:
    marked = [h for h, f in zip(header, flags) if f & {"class", "c"}]
    if len(marked) != 1:
      raise InputError(path, f"its Orange header flags {len(marked)} columns as 'class' "
                       f"({', '.join(marked)}); name the label column (data.label_column)")
    label_column = marked[0]
  label_column = label_column or "label"
  if label_column not in header:
    raise InputError(path, f"has no label column '{label_column}' (columns: "
                     f"{', '.join(header[:5])}{', ...' if len(header) > 5 else ''})")
  numeric = []
  for i, (h, t, f) in enumerate(zip(header, types, flags)):
    try:
      w = float(h)
    except ValueError:
      continue
    if h != label_column and t in ("", "c", "continuous", "n", "numeric") and not f:
      numeric.append((i, w))
  if not numeric:
    raise InputError(path, "no column is named by a wavenumber")
  cols, w = zip(*numeric)
  li = header.index(label_column)
  first = 4 if orange else 2
  spectra = np.empty((max(capacity - first + 1, 1), len(cols)), np.float32)
  labels = []
  k = 0
  with np.errstate(over="ignore"):  # a value beyond float32 is named below
    for n, row in enumerate(itertools.chain(head[first - 1:], reader), start=first):
      if not any(cell.strip() for cell in row):
        continue
      if len(row) != len(header):
        raise InputError(path, f"line {n} has {len(row)} fields; the header has {len(header)}")
      if k == len(spectra):  # more records than lines counted: a file changed under us
        spectra.resize((2 * k, len(cols)), refcheck=False)
      spectra[k] = _row_values(row, cols, w, n, path)
      if not np.isfinite(spectra[k]).all():
        _nonfinite(row, cols, w, n, path)
      labels.append(_label(row[li], n, label_column, path))
      k += 1
  if not k:
    raise InputError(path, "holds a header but no spectra")
  if k < len(spectra):
    spectra.resize((k, len(cols)), refcheck=False)  # in place: no copy
  return spectra, check_wavenumbers(w, len(w), path), np.asarray(labels)


def read_spectra_npz(path, label_column=None):
  """(spectra, wavenumbers, labels) from `.npz` arrays X, y (or `label_column`), wavenumbers."""
  label_column = label_column or "y"
  try:
    z = np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
  except (ValueError, OSError) as e:
    raise InputError(path, f"cannot read as .npz ({e})") from None
  missing = [k for k in ("X", label_column, "wavenumbers") if k not in z.files]
  if missing:
    raise InputError(path, f"has no array {missing}; it holds {z.files}")
  x, labels = np.asarray(z["X"], np.float32), np.asarray(z[label_column]).astype(str)
  if x.ndim != 2 or labels.shape != (len(x),):
    raise InputError(path, f"X is {x.shape} and {label_column} {labels.shape}; expected "
                     "(spectra, bands) and (spectra,)")
  unlabelled = [i for i, label in enumerate(labels) if _missing(label)]
  if unlabelled:
    i = unlabelled[0]
    raise InputError(path, f"spectrum {i} has no label ({label_column}[{i}] is "
                     f"{str(labels[i])!r}, which stands for a missing value)")
  wn = check_wavenumbers(z["wavenumbers"], x.shape[1], path)
  bad = np.argwhere(~np.isfinite(x))
  if len(bad):
    raise InputError(path, f"spectrum {bad[0][0]} (X[{bad[0][0]}]) has no value (NaN) at "
                     f"{wn[bad[0][1]]:g} cm^-1; every spectrum must be complete")
  return x, wn, labels


def read_spectra_table(path, label_column=None):
  """(spectra, wavenumbers, labels) by suffix: CSV or Orange (.csv .tab .tsv .txt), or .npz."""
  suffix = pathlib.Path(path).suffix
  if suffix not in TABLE_SUFFIXES:
    raise InputError(path, f"unknown spectra table format {suffix!r}; known: "
                     f"{', '.join(TABLE_SUFFIXES)}")
  reader = read_spectra_npz if suffix == ".npz" else read_spectra_csv
  return reader(path, label_column)


def write_spectra_csv(path, spectra, wavenumbers, labels, label_column="label"):
  lines = [",".join([label_column] + [f"{w:.4f}" for w in wavenumbers])]
  lines += [",".join([str(l)] + [f"{v:.6g}" for v in s]) for s, l in zip(spectra, labels)]
  atomic_files.write_text(path, "\n".join(lines) + "\n")


def read_image(path):
  """An RGB image (H, W, 3) uint8 or a label map (H, W) int, from PNG/TIFF (or .npy)."""
  path = _exists(path)
  if path.suffix == ".npy":
    return np.load(path)
  from skimage import io as skio  # noqa: PLC0415
  try:
    return np.asarray(skio.imread(path))
  except (ValueError, OSError) as e:
    raise InputError(path, f"cannot read as an image ({e})") from None


def read_rgb(path):
  image = read_image(path)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise InputError(path, f"is not an RGB image: shape {image.shape}")
  return image[..., :3]


def read_label_map(path):
  labels = read_image(path)
  if labels.ndim == 3 and labels.shape[-1] in (3, 4) and np.all(labels[..., :3] == labels[..., :1]):
    labels = labels[..., 0]  # a grey PNG saved as RGB
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise InputError(path, f"is not a label map of class indices: shape {labels.shape}, "
                     f"{labels.dtype}")
  return labels.astype(np.int32)


def write_image(path, image):
  """PNG or TIFF by suffix, written to a temporary name and renamed."""
  from skimage import io as skio  # noqa: PLC0415
  with atomic_files.atomic_path(path) as tmp:
    skio.imsave(tmp, np.asarray(image), check_contrast=False)


# --- one tissue region: cube, labels and RGB together --------------------------------------

IGNORE = -1  # the label of pixels that must not be trained on or scored (NaN spectra)


def load_region(cube_path, labels_path, rgb_path=None):
  """One region's arrays, checked against each other.

  Returns a dict: `cube` (H, W, bands) with NaN pixels set to 0, `wavenumbers`, `labels`
  (H, W) int32 with NaN pixels set to IGNORE, `num_nan` (how many pixels had a NaN or
  infinite value in any band; they are masked out, never fed to a network), and `rgb`
  (H, W, 3) uint8 when `rgb_path` is given. InputError when the label map or the RGB image
  is not the cube's height and width.
  """
  cube, wn = read_cube(cube_path)
  labels = read_label_map(labels_path)
  if labels.shape != cube.shape[:2]:
    raise InputError(labels_path, f"label map is {labels.shape[0]}x{labels.shape[1]}, but the "
                     f"cube {pathlib.Path(cube_path).name} is {cube.shape[0]}x{cube.shape[1]}")
  bad = ~np.all(np.isfinite(cube), axis=-1)
  region = {"cube": np.where(bad[..., None], 0.0, cube).astype(np.float32), "wavenumbers": wn,
            "labels": np.where(bad, IGNORE, labels).astype(np.int32), "num_nan": int(bad.sum())}
  if rgb_path is not None:
    rgb = read_rgb(rgb_path)
    if rgb.shape[:2] != cube.shape[:2]:
      raise InputError(rgb_path, f"RGB image is {rgb.shape[0]}x{rgb.shape[1]}, but the cube "
                       f"{pathlib.Path(cube_path).name} is {cube.shape[0]}x{cube.shape[1]}")
    region["rgb"] = rgb
  return region


def check_classes(labels, classes, where):
  """InputError naming every class of `classes` that has no pixel in `labels`."""
  counts = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0].ravel(),
                       minlength=len(classes))
  if len(counts) > len(classes):
    raise InputError(where, f"label {len(counts) - 1} is beyond the {len(classes)} classes")
  empty = [c for c, n in zip(classes, counts) if n == 0]
  if empty:
    raise InputError(where, f"class {', '.join(map(repr, empty))} has no pixels")
  return counts
