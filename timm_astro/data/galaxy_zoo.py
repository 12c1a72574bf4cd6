"""Galaxy Zoo 2 galaxies with their volunteer vote counts: one import serves the vote benchmark and the class one.

The source is the user's copy of the GitHub repository Onkarj012/galaxy-dna-fingerprinting, branch ``master``
(``git archive master datafinal datafinal2``): 7,945 SDSS DR16 cutouts (128x128 RGB JPEG, 0.2"/px) in
``datafinal*/images/`` with ``datafinal*/image_mapping_new.csv``, which holds ra, dec and the Galaxy Zoo 2 vote table
of Willett et al. (2013) for GZ2's questions t01-t09 (per answer: ``_count``, ``_weight``, ``_fraction``,
``_weighted_fraction``, ``_debiased``, ``_flag``). No licence is stated: keep the images out of version control.

What the import does, and why:

* **De-duplication by sky position.** 323 positions appear in both halves, with identical vote counts; a galaxy is
  kept once (its first appearance: ``datafinal`` before ``datafinal2``), so no galaxy can be in train and test at
  once. Positions are compared after rounding to 1e-5 degree (0.04"); the two closest distinct galaxies are 5.5"
  apart. A repeated position whose counts differ is refused.
* **Classes from the vote fractions** (``GZ2_CLASS_RULE``), for the class benchmark. The source's own
  ``extended_label`` is an argmax over two fractions and mixes halves selected differently, so it is not used. With
  ``f`` the debiased fraction of an answer (Willett et al.'s correction for the bias of distant galaxies looking
  smooth) and a threshold of 0.5 down the tree:

  - ``smooth_round`` / ``smooth_in_between`` / ``smooth_cigar``: ``f(smooth) >= 0.5`` and that t07 answer >= 0.5;
  - ``edge_on``: ``f(features or disk) >= 0.5`` and ``f(edge-on: yes) >= 0.5``;
  - ``barred``: features, ``f(edge-on: no) >= 0.5`` and ``f(bar) >= 0.5``;
  - ``unbarred_spiral``: features, not edge-on, ``f(no bar) >= 0.5`` and ``f(spiral) >= 0.5``;

  and every question the rule reads must have at least ``GZ2_MIN_VOTES`` votes. A galaxy must meet exactly one
  class: the debiased fractions of a question need not sum to 1, so 371 rows reach 0.5 for two classes (smooth and
  featured at once), and these are ambiguous, not the first class listed. A galaxy that meets no class or two (a
  featured galaxy without arms or bar, a star or artefact, an undecided vote, a missing debiased fraction) has label
  -1: it is in the vote benchmark only, its image under ``unclassified/<split>/``. On the source this gives 6,183
  classified galaxies (smooth_round 846, smooth_in_between 1,126, smooth_cigar 375, edge_on 1,258, barred 1,476,
  unbarred_spiral 1,102) and 1,439 unclassified.
* **One seeded split for both benchmarks**, stratified by class (the unclassified galaxies as one more stratum) and
  keyed by sky position (``timm_astro.data.splits``), 10% validation and 35% test by default (``GZ2_FRACTIONS``):
  about 620 classified galaxies for validation and 2,160 for test, enough to resolve ~3 points of top-1 with a paired
  interval, and still 206 training images in the smallest class (smooth_cigar), so k = 100 per class is possible.

The output (``timm-astro import gz2-votes SRC OUT``) is ``OUT/<split>/<class>/`` (an ImageFolder for timm's
scripts), ``OUT/unclassified/<split>/``, and ``manifest.csv`` with one row per galaxy: file, split, label (-1 for
none), class name, source file, ra, dec and the vote count of every answer (``GZ2_COUNT_COLUMNS``, named as in the
Galaxy Zoo 2 table). ``dataset.json`` says ``"kind": "votes"`` and ``"tree": "gz2"``.
"""
import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from timm_astro.data.paths import resolve_inside
from timm_astro.errors import UserError

__all__ = ['GZ2_CLASSES', 'GZ2_COUNT_COLUMNS', 'GZ2_MIN_VOTES', 'GZ2_FRACTIONS', 'GZ2_HALVES', 'UNCLASSIFIED_FOLDER', 'gz2_class',
           'read_gz2_votes']

GZ2_HALVES = ('datafinal', 'datafinal2')
UNCLASSIFIED_FOLDER = 'unclassified'
GZ2_CLASSES = ('smooth_round', 'smooth_in_between', 'smooth_cigar', 'edge_on', 'barred', 'unbarred_spiral')
GZ2_THRESHOLD = 0.5
GZ2_MIN_VOTES = 5
GZ2_FRACTIONS = (0.1, 0.35)  # validation, test

# question -> its answers, as named in the Galaxy Zoo 2 table (Willett et al. 2013); t10/t11 are not in the source
GZ2_QUESTIONS: Dict[str, Tuple[str, ...]] = {
    't01_smooth_or_features': ('a01_smooth', 'a02_features_or_disk', 'a03_star_or_artifact'),
    't02_edgeon': ('a04_yes', 'a05_no'),
    't03_bar': ('a06_bar', 'a07_no_bar'),
    't04_spiral': ('a08_spiral', 'a09_no_spiral'),
    't05_bulge_prominence': ('a10_no_bulge', 'a11_just_noticeable', 'a12_obvious', 'a13_dominant'),
    't06_odd': ('a14_yes', 'a15_no'),
    't07_rounded': ('a16_completely_round', 'a17_in_between', 'a18_cigar_shaped'),
    't08_odd_feature': ('a19_ring', 'a20_lens_or_arc', 'a21_disturbed', 'a22_irregular', 'a23_other', 'a24_merger',
                        'a38_dust_lane'),
    't09_bulge_shape': ('a25_rounded', 'a26_boxy', 'a27_no_bulge'),
}
GZ2_COUNT_COLUMNS: Tuple[str, ...] = tuple(
    f'{question}_{answer}_count' for question, answers in GZ2_QUESTIONS.items() for answer in answers)

# class -> the (question, answer) pairs whose debiased fraction must reach the threshold, in the order they are read
GZ2_CLASS_RULE: Dict[str, Tuple[Tuple[str, str], ...]] = {
    'smooth_round': (('t01_smooth_or_features', 'a01_smooth'), ('t07_rounded', 'a16_completely_round')),
    'smooth_in_between': (('t01_smooth_or_features', 'a01_smooth'), ('t07_rounded', 'a17_in_between')),
    'smooth_cigar': (('t01_smooth_or_features', 'a01_smooth'), ('t07_rounded', 'a18_cigar_shaped')),
    'edge_on': (('t01_smooth_or_features', 'a02_features_or_disk'), ('t02_edgeon', 'a04_yes')),
    'barred': (('t01_smooth_or_features', 'a02_features_or_disk'), ('t02_edgeon', 'a05_no'), ('t03_bar', 'a06_bar')),
    'unbarred_spiral': (('t01_smooth_or_features', 'a02_features_or_disk'), ('t02_edgeon', 'a05_no'),
                        ('t03_bar', 'a07_no_bar'), ('t04_spiral', 'a08_spiral')),
}
assert tuple(GZ2_CLASS_RULE) == GZ2_CLASSES


def _number(row: Mapping[str, str], column: str) -> float:
    value = (row.get(column) or '').strip()
    try:
        return float(value) if value else math.nan
    except ValueError:
        return math.nan


def gz2_class(row: Mapping[str, str]) -> int:
    """The class (index into ``GZ2_CLASSES``) a row of the GZ2 table meets by ``GZ2_CLASS_RULE``, or -1 when it
    meets none or more than one (the debiased fractions of a question need not sum to 1, so a galaxy can reach 0.5
    for both smooth and features: such a galaxy is ambiguous, not the first class listed)."""
    met = [label for label, conditions in enumerate(GZ2_CLASS_RULE.values())
           if all(_number(row, f'{q}_{a}_debiased') >= GZ2_THRESHOLD
                  and sum(_number(row, f'{q}_{x}_count') for x in GZ2_QUESTIONS[q]) >= GZ2_MIN_VOTES
                  for q, a in conditions)]
    return met[0] if len(met) == 1 else -1


def _counts(row: Mapping[str, str], where: str) -> List[int]:
    counts = []
    for column in GZ2_COUNT_COLUMNS:
        value = (row.get(column) or '').strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= 0 and number == int(number)):
            raise UserError(f'{where}: {column} is {value!r}; expected a vote count (a whole number of at least 0)')
        counts.append(int(number))
    return counts


def _position_key(ra: float, dec: float) -> str:
    return f'{round(ra, 5):.5f},{round(dec, 5):+.5f}'


class GZ2Galaxy:
    """One de-duplicated galaxy of the source: its image, position, vote counts and derived class."""
    __slots__ = ('image', 'source_file', 'file_name', 'ra', 'dec', 'counts', 'label')

    def __init__(self, image: Path, source_file: str, file_name: str, ra: str, dec: str, counts: List[int],
                 label: int):
        self.image, self.source_file, self.file_name = image, source_file, file_name
        self.ra, self.dec, self.counts, self.label = ra, dec, counts, label

    @property
    def key(self) -> str:
        """The split key: the sky position, so a galaxy's split does not depend on which half listed it."""
        return _position_key(float(self.ra), float(self.dec))


def read_gz2_votes(src: Path) -> Tuple[List[GZ2Galaxy], Dict[str, int]]:
    """The de-duplicated galaxies of the user's copy ``src`` (the repository, or a folder holding ``datafinal/`` and
    ``datafinal2/``), in source order, and counts of what was read (``rows``, ``duplicates``)."""
    src = Path(src)
    tables = [src / half / 'image_mapping_new.csv' for half in GZ2_HALVES]
    missing = [t for t in tables if not t.is_file()]
    if missing:
        raise UserError(f'{src}: no {missing[0].relative_to(src)}; expected the datafinal/ and datafinal2/ folders '
                        f"of Onkarj012/galaxy-dna-fingerprinting's master branch")
    galaxies: List[GZ2Galaxy] = []
    seen: Dict[str, GZ2Galaxy] = {}
    stats = {'rows': 0, 'duplicates': 0}
    for table in tables:
        with open(table, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            needed = ('image_filename', 'ra', 'dec') + GZ2_COUNT_COLUMNS
            absent = [c for c in needed if c not in (reader.fieldnames or ())]
            if absent:
                raise UserError(f'{table}: missing column {absent[0]}' + (f' and {len(absent) - 1} more'
                                if len(absent) > 1 else '') + '; expected the Galaxy Zoo 2 vote table')
            for line, row in enumerate(reader, start=2):
                where = f'{table}, line {line}'
                stats['rows'] += 1
                ra, dec = _number(row, 'ra'), _number(row, 'dec')
                if not (math.isfinite(ra) and math.isfinite(dec) and 0 <= ra <= 360 and -90 <= dec <= 90):
                    raise UserError(f"{where}: ra {row['ra']!r}, dec {row['dec']!r}; expected degrees (ra in "
                                    f"[0, 360], dec in [-90, 90])")
                counts = _counts(row, where)
                image = resolve_inside(src, row['image_filename'], where)
                if not image.is_file():
                    raise UserError(f"{where}: image {row['image_filename']!r} is not in the copy at {src}")
                galaxy = GZ2Galaxy(image, image.relative_to(src.resolve()).as_posix(),
                                   f'{table.parent.name}_{image.name}', row['ra'].strip(), row['dec'].strip(),
                                   counts, gz2_class(row))
                first = seen.get(galaxy.key)
                if first is not None:
                    if first.counts != galaxy.counts:
                        raise UserError(f'{where}: {galaxy.source_file} is at the position of {first.source_file} '
                                        f'(ra {galaxy.ra}, dec {galaxy.dec}) with other vote counts; expected one '
                                        f'galaxy per position')
                    stats['duplicates'] += 1
                    continue
                seen[galaxy.key] = galaxy
                galaxies.append(galaxy)
    return galaxies, stats


def class_counts(galaxies: List[GZ2Galaxy]) -> Dict[Optional[str], int]:
    """Galaxies per class name (``None`` for those that meet no class)."""
    counts: Dict[Optional[str], int] = {}
    for galaxy in galaxies:
        name = GZ2_CLASSES[galaxy.label] if galaxy.label >= 0 else None
        counts[name] = counts.get(name, 0) + 1
    return counts
