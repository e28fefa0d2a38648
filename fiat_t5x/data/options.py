"""Answer options as a block: header x item marker x item ending, thousands of formats.

Like the Flan Collection, a block is `header + marker_1 + option_1 + ending + marker_2 + ...`:
- a header (16 kinds, one of them none), e.g. "Choices:";
- an item marker: a bullet ("- ", "+ ", "[-] ", ...) or a counter (letters A/a, numbers, roman
  numerals I/i in styles "A.", "A)", "(A)", "(A).", "[A]", "[A].", "A:"), placed on a new line,
  on a new indented line, or inline after a space;
- an item ending: none, ";" or ".".
The three are drawn independently and uniformly per example (stable hash, purposes
"options_header", "options_marker", "options_ending"); `options_format` records the flat index
`(header * num_markers + marker) * num_endings + ending`. With an empty header the block starts at
its first item (no leading newline).

When the markers are distinct (counters) and the answer is one of the options, the target
becomes the marker's label ("(B)", "b", "III", ...; a marker's final "." or ":" is not part of
it); otherwise the answer text stays. Matching ignores surrounding whitespace. An example with
no options gets an empty block in every format. Up to 26 options.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import string
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fiat_t5x.data.templates import Template, hashed_choice

MAX_OPTIONS = 26
_ROMAN = (
    "I II III IV V VI VII VIII IX X XI XII XIII XIV XV XVI XVII XVIII XIX XX "
    "XXI XXII XXIII XXIV XXV XXVI"
).split()
COUNTERS: dict[str, tuple[str, ...]] = {
    "upper": tuple(string.ascii_uppercase),
    "lower": tuple(string.ascii_lowercase),
    "number": tuple(str(i) for i in range(1, MAX_OPTIONS + 1)),
    "roman": tuple(_ROMAN),
    "roman_lower": tuple(r.lower() for r in _ROMAN),
}
COUNTER_STYLES = ("{}.", "{})", "({})", "({}).", "[{}]", "[{}].", "{}:")
BULLETS = ("-", "--", "+", "*", "[-]", "[+]")
# Where an item starts: its own line, its own indented line, or inline.
PLACEMENTS = ("\n", "\n ", " ")

HEADERS: tuple[str, ...] = (
    "",
    "OPTIONS:",
    "Options:",
    "Choices:",
    "Answer choices:",
    "Possible answers:",
    "Candidates:",
    "Pick one:",
    "Choose one:",
    "Choose from:",
    "Select one:",
    "Your options:",
    "The options are:",
    "Which one is it?",
    "Pick from the following.",
    "Select from the list below.",
)
ENDINGS: tuple[str, ...] = ("", ";", ".")


@dataclasses.dataclass(frozen=True)
class Marker:
    """One item-marker style: the prefix of each item, by position.

    Attributes:
      prefixes: `MAX_OPTIONS` item prefixes, e.g. ("\\n(A) ", "\\n(B) ", ...).
      name: e.g. "newline (upper)".
    """

    prefixes: tuple[str, ...]
    name: str

    @functools.cached_property
    def distinct(self) -> bool:
        """Counters label each item differently (so the answer can be its label)."""
        return len({p.strip() for p in self.prefixes}) == len(self.prefixes)

    def label(self, position: int) -> str:
        """The answer label of item `position`: "(B)" for "\\n(B). ", "b" for " b: "."""
        return re.sub(r"[.:]$", "", self.prefixes[position].strip())


def _markers() -> tuple[Marker, ...]:
    markers = []
    for placement, bullet, space in itertools.product(PLACEMENTS, BULLETS, (" ", "")):
        prefix = placement + bullet + space
        markers.append(Marker((prefix,) * MAX_OPTIONS, f"{placement!r} {bullet + space!r}"))
    for placement, counter, style in itertools.product(PLACEMENTS, COUNTERS, COUNTER_STYLES):
        prefixes = tuple(placement + style.format(c) + " " for c in COUNTERS[counter])
        markers.append(Marker(prefixes, f"{placement!r} {counter} {style}"))
    return tuple(markers)


MARKERS: tuple[Marker, ...] = _markers()


@dataclasses.dataclass(frozen=True)
class OptionsFormat:
    """One concrete options format (a header, a marker, an ending)."""

    header: str
    marker: Marker
    ending: str

    def render(self, options: Sequence[str]) -> str:
        """The block for `options` ("" when there are none)."""
        if not options:
            return ""
        if len(options) > MAX_OPTIONS:
            raise ValueError(f"{len(options)} options: at most {MAX_OPTIONS} can be labelled")
        items = "".join(
            self.marker.prefixes[i] + option + self.ending for i, option in enumerate(options)
        )
        return self.header + items if self.header else items.lstrip("\n")

    def target_for(self, answer: str, options: Sequence[str]) -> str:
        """The target for `answer`: its marker label when markers are distinct and it is listed."""
        stripped = [o.strip() for o in options]
        if not self.marker.distinct or answer.strip() not in stripped:
            return answer
        return self.marker.label(stripped.index(answer.strip()))


@dataclasses.dataclass(frozen=True)
class OptionsSpace:
    """All the formats an example's options may take: headers x markers x endings."""

    headers: tuple[str, ...] = HEADERS
    markers: tuple[Marker, ...] = MARKERS
    endings: tuple[str, ...] = ENDINGS

    def __post_init__(self) -> None:
        if not (self.headers and self.markers and self.endings):
            raise ValueError("an OptionsSpace needs at least one header, marker and ending")

    @functools.cached_property
    def tables(self) -> dict[str, np.ndarray]:
        """Constant tables for the graph: item prefixes and answer labels [markers, 26]."""
        return {
            "prefixes": np.array([m.prefixes for m in self.markers], dtype=object),
            "labels": np.array(
                [[m.label(i) for i in range(MAX_OPTIONS)] for m in self.markers], dtype=object
            ),
            "distinct": np.array([m.distinct for m in self.markers]),
        }

    @property
    def size(self) -> int:
        return len(self.headers) * len(self.markers) * len(self.endings)

    def format(self, index: int) -> OptionsFormat:
        """The format with flat index `index` (as recorded in the `options_format` feature)."""
        if not 0 <= index < self.size:
            raise ValueError(f"options format {index}: out of range [0, {self.size})")
        rest, ending = divmod(index, len(self.endings))
        header, marker = divmod(rest, len(self.markers))
        return OptionsFormat(self.headers[header], self.markers[marker], self.endings[ending])

    def draw(self, keys: tf.Tensor, seed_texts: tf.Tensor) -> tf.Tensor:
        """Flat format indices (int32, the shape of `keys`), three independent uniform draws."""
        header = hashed_choice(keys, seed_texts, "options_header", len(self.headers))
        marker = hashed_choice(keys, seed_texts, "options_marker", len(self.markers))
        ending = hashed_choice(keys, seed_texts, "options_ending", len(self.endings))
        return (header * len(self.markers) + marker) * len(self.endings) + ending


FLAN_OPTIONS_SPACE = OptionsSpace()

# The placeholder every template may use for the options block (empty in "no options" forms).
OPTIONS_PLACEHOLDER = "options"


def with_options_placeholder(template: Template) -> Template:
    """Adds "\\n\\n{options}" at the end of the inputs when the template does not place it."""
    if "{" + OPTIONS_PLACEHOLDER + "}" in template.inputs:
        return template
    return dataclasses.replace(
        template, inputs=template.inputs + "\n\n{" + OPTIONS_PLACEHOLDER + "}"
    )


def without_options(template: Template) -> Template:
    """The "no options" form: `{options}` and the whitespace just before it removed.

    "Q: {question}\\n{options}\\nA:" becomes "Q: {question}\\nA:". Examples that have no options
    use this form in every variant, so no empty header or blank lines appear.
    """
    inputs = re.sub(r"\s*\{" + OPTIONS_PLACEHOLDER + r"\}", "", template.inputs)
    return dataclasses.replace(template, inputs=inputs)


def render_options_tf(
    space: OptionsSpace, index: tf.Tensor, options: tf.Tensor, answer: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(block, target_answer)` for `space.format(index)` in the tf.data graph.

    Args:
      space: the options space.
      index: int32 scalar, a flat format index.
      options: [num_options] tf.string (may be empty; at most 26).
      answer: scalar tf.string, the answer text.
    """
    num_markers, num_endings = len(space.markers), len(space.endings)
    header_i = index // (num_markers * num_endings)
    marker_i = (index // num_endings) % num_markers
    ending_i = index % num_endings
    header = tf.gather(tf.constant(space.headers), header_i)
    tables = space.tables
    prefix_table = tf.constant(tables["prefixes"].tolist())  # [markers, 26]
    label_table = tf.constant(tables["labels"].tolist())  # [markers, 26]
    distinct = tf.gather(tf.constant(tables["distinct"]), marker_i)
    num = tf.size(options)
    prefixes = tf.gather(tf.gather(prefix_table, marker_i), tf.range(num))
    ending = tf.gather(tf.constant(space.endings), ending_i)
    items = tf.strings.reduce_join(tf.strings.join([prefixes, options, tf.fill([num], ending)]))
    block = tf.where(
        tf.equal(header, ""),
        tf.strings.regex_replace(items, r"^\n+", ""),
        tf.strings.join([header, items]),
    )
    block = tf.where(num > 0, block, "")
    match = tf.equal(tf.strings.strip(options), tf.strings.strip(answer))
    # The first match (0 when there is none: then the label is not used).
    position = tf.argmax(tf.concat([tf.cast(match, tf.int32), [0]], 0), output_type=tf.int32)
    label = tf.gather(tf.gather(label_table, marker_i), tf.minimum(position, MAX_OPTIONS - 1))
    use_label = tf.logical_and(distinct, tf.reduce_any(match))
    return block, tf.where(use_label, label, answer)
