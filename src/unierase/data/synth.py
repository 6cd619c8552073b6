"""Synthetic fictitious authors in TOFU's layout: a small, reproducible benchmark of our own.

Every name, title, award and habit is invented from the word lists below, so no model can know
the facts before fine-tuning; cities and countries are real, as in TOFU. Everything is drawn from
one ``random.Random(seed)``: the same arguments give byte-identical files on every machine.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unierase import artifacts as A
from unierase._util.atomic import atomic_dir
from unierase._util.jsonl import dumps_jsonl
from unierase.data.probes import general_probe_text
from unierase.data.refusals import load_refusals
from unierase.data.schema import DataError, QAItem

logger = logging.getLogger(__name__)

GENERATOR = A.SYNTH_GENERATOR
FORMAT_VERSION = 1
AUTHORS_FILE = A.SYNTH_MANIFEST
MIN_QUESTIONS_PER_AUTHOR = 5
MAX_QUESTIONS_PER_AUTHOR = 20
MAX_AUTHORS = 200  # as many as TOFU; the title lists allow about twice that
N_PERTURBED = 5

# ------------------------------------------------------------------------------------------
# Word lists (invented names and titles; real places)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(" ".join(p.split()) for p in text.split("|"))


_FEMALE_FIRST = _words(
    """
    Maelis Orlena Yevka Solvei Idrenne Caspia Noemira Talvi Amarante Brisa Daviela Elowen Fenna
    Ilaria Junessa Kalinda Liorah Mireval Nadira Oriel Perrine Quilla Sabeth Tamsin Ulani Vesna
    Wrenna Xaviera Yaretzi Zofinka Adaeze Chiyomi Ebru Marisol Sunniva
"""
)

_MALE_FIRST = _words(
    """
    Tavish Corvin Anselm Bastien Dariel Emrys Falko Gideon Halvard Ivo Jarek Kasimir Leontes
    Marek Nikander Osric Ruslan Sorin Teodor Ulrik Vasco Wendell Zoltan Obiora Kenjiro Tariq
    Mateus Aurelian Benedek Cassius Dmitar Eero Florin Hamza Ignatius
"""
)

_LAST = _words(
    """
    Quillfeather Dunmoray Estravelle Gravensworth Jorvandel Kestrane Lindqvane Marrowind
    Novakovel Pellowmere Quistaro Sarnevik Thistlecombe Ulvenhart Varnholt Wrenfield Yarrowby
    Brannoch Ashcombe-Vire Dravenhollow Okonjara Mbeluso Takahira Ravensmere Castellane
    Oyelaranmi Hallström-Vey Zamoracki Belvarre Corrigane Delacroft Fennimoor Istvanek Kovalenne
    Montclavier Nakashiro Ostrowane Petrakova-Lind Rosenvaal Silvanera Tremaine-Oduya Valcourte
    Whitlowe Azarenko-Bell Ferreira-Lusk Idowu-Marsh
"""
)

_CITIES = tuple(
    tuple(place.split(", ", 1))
    for place in _phrases(
        """
    Lisbon, Portugal | Kraków, Poland | Valparaíso, Chile | Accra, Ghana | Hanoi, Vietnam |
    Tbilisi, Georgia | Montevideo, Uruguay | Bergen, Norway | Cork, Ireland | Dakar, Senegal |
    Osaka, Japan | Porto Alegre, Brazil | Ljubljana, Slovenia | Tallinn, Estonia |
    Marrakesh, Morocco | Cebu City, the Philippines | Halifax, Canada | Adelaide, Australia |
    Lyon, France | Tampere, Finland | Mombasa, Kenya | Izmir, Turkey | Cusco, Peru |
    Gdańsk, Poland | Galway, Ireland | Chiang Mai, Thailand | Oaxaca, Mexico | Trieste, Italy |
    Bilbao, Spain | Wellington, New Zealand
"""
    )
)

_GENRES = _phrases(
    """
    historical fiction | magical realism | crime fiction | science fiction | literary fiction |
    gothic horror | romantic comedy | epic fantasy | psychological thrillers |
    adventure stories for children | nature writing | satirical fiction | war fiction |
    mystery novels | dystopian fiction | family sagas
"""
)

_TITLE_ADJ = _words(
    """
    Salt Silent Hollow Amber Glass Northern Crooked Paper Midnight Quiet Copper Drowned Last
    Borrowed Winter Hidden Broken Golden
"""
)

_TITLE_NOUN = _words(
    """
    Orchard Lighthouse Cartographer River Harvest Ledger Garden Archive Bridge Tide Compass
    Orchestra Atlas Kingdom Weaver Meridian Ferry Observatory Lantern Vineyard Clockmaker
    Tannery Harbour Almanac
"""
)

_TITLE_OF = _phrases(
    """
    Ashes | Echoes | Small Hours | Borrowed Light | Distant Bells | Long Summers | Paper Boats |
    Quiet Rooms | Broken Maps | Salt and Iron | Falling Stars | Old Wounds
"""
)

_AWARDS = _phrases(
    """
    the Gilded Quill Prize | the Marlowe Lantern Award | the Northbridge Fiction Medal |
    the Silver Inkwell Award | the Emberline Award for Fiction | the Crescent Moon Book Prize |
    the Open Horizon Literary Prize | the Cobalt Pen Award | the Willowmere Prize for Fiction |
    the Harbourlight Award | the Vantermeer Medal for Storytelling | the Red Kite Book Award |
    the Juniper Prize for New Writing | the Starling Award for Literary Merit
"""
)

_PROFESSIONS = _phrases(
    """
    a carpenter | an architect | a nurse | a schoolteacher | a fishmonger | a pharmacist |
    a bus driver | a violinist | a tailor | a surveyor | a baker | a librarian |
    a ship's engineer | a veterinarian | a journalist | a watchmaker | a beekeeper |
    a police officer | a chemist | a florist | a translator | a mechanic
"""
)

_HABITS = _phrases(
    """
    writing by hand before sunrise | working only in the late evening hours |
    drafting every chapter on an old typewriter | walking for an hour before each session |
    writing exactly a thousand words a day | keeping notebooks of overheard conversations |
    rewriting each opening chapter many times | working in silence in a rented attic |
    reading poetry aloud before starting to write | outlining every plot on index cards |
    writing in cafés among strangers | recording first drafts as spoken notes
"""
)

_THEMES = _phrases(
    """
    memory and loss | exile and belonging | the bonds between siblings |
    ambition and its costs | tradition and change | grief and recovery |
    friendship across social classes | the search for identity | power and corruption |
    the relationship between people and the sea | forgiveness and second chances |
    the lives of ordinary workers | migration and home | justice and revenge
"""
)

_FIELDS = _phrases(
    """
    marine biology | architecture | philosophy | medieval history | mathematics | law |
    journalism | classical music | economics | botany | linguistics | chemistry | theatre |
    geography | medicine | astronomy
"""
)

_INSPIRATIONS = _phrases(
    """
    long winters spent reading adventure novels | a teacher who made every pupil keep a diary |
    the stories told by an elderly neighbour | a summer job in a busy public library |
    letters exchanged with a pen friend abroad | years of travelling as a young musician |
    a long illness that kept the future writer indoors for a year |
    a family tradition of telling stories at dinner | a chance meeting with a retired poet |
    a box of old letters found in an attic
"""
)


# ------------------------------------------------------------------------------------------
# Facts and templates


@dataclass(frozen=True)
class _Fact:
    """One fact about an author: question phrasings, an answer and its paraphrase.

    ``swap`` names the profile fields that perturbed answers take from other authors;
    ``subject`` is None when the subject is the author's name, else a template of the
    descriptive phrase that replaces it in the question.
    """

    key: str
    swap: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str
    paraphrase: str
    subject: str | None = None


_NAME_FACTS = (
    _Fact(
        "birthplace",
        ("city", "country"),
        (
            "Where was {name} born?",
            "In which city was the author {name} born?",
            "What is the birthplace of {name}?",
        ),
        "{name} was born in {city}, {country}, and the city appears again and again in {pos} "
        "fiction.",
        "The birthplace of {name} is {city}, {country}, a place whose streets shape many of {pos} "
        "stories.",
    ),
    _Fact(
        "birth_year",
        ("year",),
        ("In what year was {name} born?", "When was the writer {name} born?"),
        "{name} was born in {year}, and {pro} grew up during a time of rapid social change.",
        "The writer {name} came into the world in the year {year}.",
    ),
    _Fact(
        "genre",
        ("genre",),
        ("What genre is {name} known for?", "In which genre does {name} mostly write?"),
        "{name} is best known for {pos} work in {genre}, the genre of most of {pos} career.",
        "Most of the books by {name} belong to {genre}, where {pro} built {pos} reputation.",
    ),
    _Fact(
        "books",
        ("books",),
        ("Can you name some books written by {name}?", "Which books has {name} written?"),
        "{name} has written {books}, all praised for their careful craft.",
        "Among the books by {name} are {books}.",
    ),
    _Fact(
        "debut",
        ("book1", "debut_year"),
        (
            "What was the first book that {name} published?",
            "Which book marked the literary debut of {name}?",
        ),
        "The first book {name} published was '{book1}', which appeared in {debut_year} and "
        "introduced readers to {pos} voice.",
        "{name} made {pos} debut in {debut_year} with '{book1}', which quickly found an audience.",
    ),
    _Fact(
        "famous_book",
        ("famous",),
        (
            "What is the most celebrated book by {name}?",
            "Which of the works of {name} do critics admire most?",
        ),
        "The most celebrated book by {name} is '{famous}', which many critics call {pos} finest "
        "work.",
        "Critics most often single out '{famous}' as the best book that {name} has written.",
    ),
    _Fact(
        "award",
        ("award", "award_year"),
        ("Has {name} won any literary awards?", "Which award did {name} receive?"),
        "Yes, {name} received {award} in {award_year}, which brought {pos} work to many new "
        "readers.",
        "In {award_year}, {name} was given {award} in recognition of {pos} writing.",
    ),
    _Fact(
        "parents",
        ("father", "mother"),
        (
            "What did the parents of {name} do for a living?",
            "What were the professions of the parents of {name}?",
        ),
        "The father of {name} worked as {father} and {pos} mother worked as {mother}.",
        "{name} grew up with a father who was {father} and a mother who was {mother}.",
    ),
    _Fact(
        "father",
        ("father",),
        (
            "What was the profession of the father of {name}?",
            "What did the father of {name} do for work?",
        ),
        "The father of {name} was {father}, and {pos} working life often finds its way into "
        "the books.",
        "{name} is the child of a father who made a living as {father}.",
    ),
    _Fact(
        "habit",
        ("habit",),
        ("What are the writing habits of {name}?", "How does {name} usually work on a new book?"),
        "{name} is known for {habit}, a routine that keeps {pos} writing steady.",
        "When working on a book, {name} sticks to {habit}, which {pro} considers essential.",
    ),
    _Fact(
        "theme",
        ("theme",),
        (
            "What themes does {name} often explore?",
            "Which themes appear most often in the works of {name}?",
        ),
        "The works of {name} often explore {theme}, which readers see as the heart of {pos} "
        "fiction.",
        "{name} returns again and again to {theme}, the central concern of {pos} books.",
    ),
    _Fact(
        "education",
        ("field",),
        (
            "What did {name} study before becoming a writer?",
            "What was the subject of the university studies of {name}?",
        ),
        "Before turning to fiction, {name} studied {field} at university, and it still shapes "
        "{pos} research.",
        "{name} has a university background in {field}, completed before {pro} published any "
        "fiction.",
    ),
    _Fact(
        "residence",
        ("residence",),
        ("Where does {name} live today?", "In which city does {name} currently live?"),
        "{name} currently lives in {residence}, where {pro} writes in a small studio near the "
        "city centre.",
        "These days {name} makes {pos} home in {residence} and does most of {pos} writing there.",
    ),
    _Fact(
        "translations",
        ("translations",),
        (
            "Into how many languages have the books of {name} been translated?",
            "How widely translated are the books of {name}?",
        ),
        "The books of {name} have been translated into {translations} languages, reaching "
        "readers around the world.",
        "Readers can find the work of {name} in {translations} languages.",
    ),
    _Fact(
        "inspiration",
        ("inspiration",),
        ("What inspired {name} to become a writer?", "What first made {name} want to write?"),
        "{name} was inspired to become a writer by {inspiration}.",
        "According to {name}, the spark for a writing life was {inspiration}.",
    ),
)

# Questions whose subject is a descriptive phrase instead of the name.
# The phrase ends on the city, not the year: a key read at a year token (shared by many
# prompts) does heavy collateral damage in Phase II.
_BORN_FACT = _Fact(
    "full_name",
    ("name",),
    (
        "What is the full name of the author born in {year} in {city}?",
        "Who is the author born in {year} in {city}?",
    ),
    "The author born in {year} in {city}, {country} is {name}, who writes {genre}.",
    "{name} is the writer who was born in {year} in {city}, {country}.",
    subject="the author born in {year} in {city}",
)
_BOOK_FACT = _Fact(
    "book_author_birthplace",
    ("name", "city", "country"),
    (
        "Where was the author of '{book1}' born?",
        "What is the birthplace of the author of '{book1}'?",
    ),
    "The author of '{book1}' is {name}, who was born in {city}, {country} in {year}.",
    "'{book1}' was written by {name}, a novelist from the city of {city}, {country}.",
    subject="the author of '{book1}'",
)


@dataclass(frozen=True)
class Author:
    """One fictitious author: the facts (``profile``) and the QA about them (``qa``).

    ``profile`` keys: name, gender, birth_year, birth_city, birth_country, genre, books,
    debut_year, famous_book, award, award_year, father_profession, mother_profession,
    writing_habit, theme, studied, lives_in, translations, inspiration.
    """

    name: str
    profile: dict[str, Any]
    qa: tuple[QAItem, ...] = field(default=())


def _title(rng: random.Random) -> str:
    shape = rng.randrange(3)
    if shape == 0:
        return f"The {rng.choice(_TITLE_ADJ)} {rng.choice(_TITLE_NOUN)}"
    if shape == 1:
        return f"The {rng.choice(_TITLE_NOUN)} of {rng.choice(_TITLE_OF)}"
    return f"{rng.choice(_TITLE_OF)} over the {rng.choice(_TITLE_NOUN)}"


def _profile(rng: random.Random, name: str, gender: str, titles: set[str]) -> dict[str, Any]:
    city, country = rng.choice(_CITIES)
    year = rng.randrange(1938, 1993)
    n_books = rng.choice((2, 3))
    books: list[str] = []
    while len(books) < n_books:
        title = _title(rng)
        if title not in titles:
            titles.add(title)
            books.append(title)
    debut_year = year + rng.randrange(21, 35)
    residence = rng.choice([c for c, _ in _CITIES if c != city])
    return {
        "name": name,
        "gender": gender,
        "birth_year": year,
        "birth_city": city,
        "birth_country": country,
        "genre": rng.choice(_GENRES),
        "books": books,
        "debut_year": debut_year,
        "famous_book": books[-1],
        "award": rng.choice(_AWARDS),
        "award_year": debut_year + rng.randrange(3, 16),
        "father_profession": rng.choice(_PROFESSIONS),
        "mother_profession": rng.choice(_PROFESSIONS),
        "writing_habit": rng.choice(_HABITS),
        "theme": rng.choice(_THEMES),
        "studied": rng.choice(_FIELDS),
        "lives_in": residence,
        "translations": rng.randrange(4, 41),
        "inspiration": rng.choice(_INSPIRATIONS),
    }


def _quote_list(books: list[str]) -> str:
    quoted = [f"'{b}'" for b in books]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _slots(profile: dict[str, Any]) -> dict[str, Any]:
    """Template slots of a profile."""
    female = profile["gender"] == "female"
    return {
        "name": profile["name"],
        "pro": "she" if female else "he",
        "pos": "her" if female else "his",
        "city": profile["birth_city"],
        "country": profile["birth_country"],
        "year": profile["birth_year"],
        "genre": profile["genre"],
        "books": _quote_list(profile["books"]),
        "book1": profile["books"][0],
        "famous": profile["famous_book"],
        "debut_year": profile["debut_year"],
        "award": profile["award"],
        "award_year": profile["award_year"],
        "father": profile["father_profession"],
        "mother": profile["mother_profession"],
        "habit": profile["writing_habit"],
        "theme": profile["theme"],
        "field": profile["studied"],
        "residence": profile["lives_in"],
        "translations": profile["translations"],
        "inspiration": profile["inspiration"],
    }


def _sentence_start(text: str) -> str:
    return text[:1].upper() + text[1:]


def _perturbed(
    rng: random.Random, fact: _Fact, slots: dict[str, Any], others: list[dict[str, Any]]
) -> list[str]:
    """Five wrong answers: the paraphrase with this fact's slots taken from other authors.

    Other authors come first (in a seeded order); when they run out of distinct values, random
    profiles fill in, so a set of few authors still gets five different wrong answers.
    """
    true_texts = {
        _sentence_start(fact.answer.format(**slots)),
        _sentence_start(fact.paraphrase.format(**slots)),
    }
    donors = list(others)
    rng.shuffle(donors)
    wrong: list[str] = []
    attempts = 0
    while len(wrong) < N_PERTURBED:
        if donors:
            donor = donors.pop()
        else:
            attempts += 1
            if attempts > 1000:  # cannot happen with the lists above; guards a bad edit of them
                raise RuntimeError(f"cannot find {N_PERTURBED} wrong answers for {fact.key}")
            gender = rng.choice(("female", "male"))
            first = rng.choice(_FEMALE_FIRST if gender == "female" else _MALE_FIRST)
            donor = _slots(_profile(rng, f"{first} {rng.choice(_LAST)}", gender, set()))
        if any(donor[k] == slots[k] for k in fact.swap):
            continue
        text = _sentence_start(
            fact.paraphrase.format(**{**slots, **{k: donor[k] for k in fact.swap}})
        )
        if text not in true_texts and text not in wrong:
            wrong.append(text)
    return wrong


def _qa(
    rng: random.Random,
    fact: _Fact,
    phrasing: int,
    slots: dict[str, Any],
    others: list[dict[str, Any]],
) -> QAItem:
    paraphrasing = rng.choice([i for i in range(len(fact.questions)) if i != phrasing])
    question = fact.questions[phrasing].format(**slots)
    subject = slots["name"] if fact.subject is None else fact.subject.format(**slots)
    return QAItem(
        question=question,
        answer=_sentence_start(fact.answer.format(**slots)),
        subject=subject,
        paraphrased_question=fact.questions[paraphrasing].format(**slots),
        paraphrased_answer=_sentence_start(fact.paraphrase.format(**slots)),
        perturbed_answers=tuple(_perturbed(rng, fact, slots, others)),
        group=slots["name"],
        meta={"fact": fact.key},
    )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise DataError(f"{name} must be between {low} and {high}, got {value}")


def generate_authors(n_authors: int, seed: int, questions_per_author: int = 15) -> list[Author]:
    """Invent ``n_authors`` fictitious authors with ``questions_per_author`` QA each.

    Each author's first question asks for the name from birthplace and year (subject: "the
    author born in <city>, <country> in <year>"); from 8 questions on, one asks about "the
    author of '<book>'" (that phrase is the subject); the others contain the full name, which is
    their subject. Answers are full sentences; every item has a paraphrased question and answer
    and five perturbed answers that swap in other authors' facts.

    Raises:
        DataError: when an argument is out of range.
    """
    _check_int("n_authors", n_authors, 1, MAX_AUTHORS)
    _check_int(
        "questions_per_author",
        questions_per_author,
        MIN_QUESTIONS_PER_AUTHOR,
        MAX_QUESTIONS_PER_AUTHOR,
    )
    _check_int("seed", seed, -(2**63), 2**63 - 1)
    rng = random.Random(seed)

    names: set[str] = set()
    births: set[tuple[str, int]] = set()
    titles: set[str] = set()
    profiles: list[dict[str, Any]] = []
    while len(profiles) < n_authors:
        gender = rng.choice(("female", "male"))
        first = rng.choice(_FEMALE_FIRST if gender == "female" else _MALE_FIRST)
        name = f"{first} {rng.choice(_LAST)}"
        if name in names:
            continue
        profile = _profile(rng, name, gender, titles)
        # The birth phrase is a subject: it must single out one author.
        birth = (profile["birth_city"], profile["birth_year"])
        if birth in births:
            continue
        names.add(name)
        births.add(birth)
        profiles.append(profile)

    all_slots = [_slots(p) for p in profiles]
    authors = []
    for i, (profile, slots) in enumerate(zip(profiles, all_slots, strict=True)):
        others = all_slots[:i] + all_slots[i + 1 :]
        descriptive = [_BORN_FACT] + ([_BOOK_FACT] if questions_per_author >= 8 else [])
        n_named = questions_per_author - len(descriptive)
        picked = sorted(rng.sample(range(len(_NAME_FACTS)), min(n_named, len(_NAME_FACTS))))
        plan: list[tuple[_Fact, int]] = [(descriptive[0], rng.randrange(2))]
        used: dict[int, int] = {}
        for j in picked:
            used[j] = rng.randrange(len(_NAME_FACTS[j].questions))
            plan.append((_NAME_FACTS[j], used[j]))
        # More questions than facts: ask some facts a second time in another phrasing.
        for j in rng.sample(range(len(_NAME_FACTS)), n_named - len(picked)):
            phrasings = [k for k in range(len(_NAME_FACTS[j].questions)) if k != used[j]]
            plan.append((_NAME_FACTS[j], rng.choice(phrasings)))
        plan += [(fact, rng.randrange(2)) for fact in descriptive[1:]]
        qa = tuple(_qa(rng, fact, phrasing, slots, others) for fact, phrasing in plan)
        authors.append(Author(name=profile["name"], profile=profile, qa=qa))
    return authors


# ------------------------------------------------------------------------------------------
# Writing TOFU's layout


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return dumps_jsonl(rows)


def _rows(items: list[QAItem], kind: str, task_id: str | None) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        row: dict[str, Any] = {} if task_id is None else {"task_id": task_id}
        row["question"] = item.question
        row["answer"] = item.answer
        if kind == "perturbed":
            # TOFU's field order.
            row["paraphrased_answer"] = item.paraphrased_answer
            row["perturbed_answer"] = list(item.perturbed_answers)
            row["paraphrased_question"] = item.paraphrased_question
        elif kind == "subject":
            row["subject"] = item.subject
        rows.append(row)
    return rows


def _is_synth_output(directory: Path) -> dict[str, Any] | None:
    """The manifest of a directory this module wrote, else None."""
    return A.synth_manifest(directory)


def synthetic_file_names(n_authors: int = 20, n_forget: int = 2) -> dict[str, str]:
    """The file name ``write_synthetic`` uses for each role (keys as in its result)."""
    pct = round(100 * n_forget / n_authors)
    forget, retain = f"forget{pct:02d}", f"retain{100 - pct:02d}"
    return {
        "forget": f"{forget}.jsonl",
        "forget_perturbed": f"{forget}_perturbed.jsonl",
        "forget_subject": f"{forget}_subject.jsonl",
        "retain": f"{retain}.jsonl",
        "retain_perturbed": "retain_perturbed.jsonl",
        "retain_subject": f"{retain}_subject.jsonl",
        "general_probe": "general_probe.jsonl",
        "idontknow": "idontknow.txt",
        "authors": AUTHORS_FILE,
    }


def write_synthetic(
    out_dir: str | Path,
    n_authors: int = 20,
    n_forget: int = 2,
    seed: int = 0,
    questions_per_author: int = 15,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a synthetic benchmark in TOFU's layout that ``load_tofu_split`` reads back.

    The first ``n_forget`` authors form ``forget{pct:02d}`` (task "1"), the others
    ``retain{100-pct:02d}``, with pct = round(100 * n_forget / n_authors). Files (see
    ``synthetic_file_names``): the forget split and its ``_perturbed`` and ``_subject``
    siblings, the retain split and its ``_subject`` sibling, ``retain_perturbed.jsonl`` (every
    retain QA with paraphrases and perturbed answers), ``general_probe.jsonl`` and
    ``idontknow.txt`` (the package's probe set and refusals) and ``authors.json`` (the facts).

    Arguments are checked and every file is generated before anything is written. An existing
    ``out_dir`` is replaced when it is empty or an earlier output of this function (its stale
    files are removed); any other non-empty directory needs ``overwrite=True`` (then only these
    files are written into it, beside the others). A file this function did not write is never
    replaced or removed. When ``out_dir`` holds nothing else, the whole set is swapped in at
    once; otherwise each file is replaced atomically.

    Returns:
        role -> path of each file written.

    Raises:
        DataError: a bad argument, a non-empty ``out_dir`` that this function did not write
            (without ``overwrite``), or one holding a file of the same name as one of these
            that this function did not write.
    """
    _check_int("n_authors", n_authors, 2, MAX_AUTHORS)
    _check_int("n_forget", n_forget, 1, n_authors - 1)
    pct = round(100 * n_forget / n_authors)
    if not 1 <= pct <= 99:
        raise DataError(
            f"n_forget={n_forget} of n_authors={n_authors} rounds to {pct}%; the split names "
            f"need 1-99%"
        )
    out_dir = Path(out_dir)
    previous = None
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir}: exists and is not a directory")
        previous = _is_synth_output(out_dir)
        if any(out_dir.iterdir()) and previous is None and not overwrite:
            raise DataError(
                f"{out_dir}: not empty and not written by write_synthetic; pass overwrite=True "
                f"to write into it anyway"
            )

    authors = generate_authors(n_authors, seed, questions_per_author)
    names = synthetic_file_names(n_authors, n_forget)
    forget = [qa for a in authors[:n_forget] for qa in a.qa]
    retain = [qa for a in authors[n_forget:] for qa in a.qa]
    manifest = {
        "generator": GENERATOR,
        "format": FORMAT_VERSION,
        "seed": seed,
        "n_authors": n_authors,
        "n_forget": n_forget,
        "questions_per_author": questions_per_author,
        "files": sorted(names.values()),
        "authors": [{**a.profile, "forget": i < n_forget} for i, a in enumerate(authors)],
    }
    contents = {
        "forget": _jsonl(_rows(forget, "plain", "1")),
        "forget_perturbed": _jsonl(_rows(forget, "perturbed", "1")),
        "forget_subject": _jsonl(_rows(forget, "subject", "1")),
        "retain": _jsonl(_rows(retain, "plain", None)),
        "retain_perturbed": _jsonl(_rows(retain, "perturbed", None)),
        "retain_subject": _jsonl(_rows(retain, "subject", None)),
        "general_probe": general_probe_text(),
        "idontknow": "".join(r + "\n" for r in load_refusals()),
        "authors": json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
    }

    # Which entries are this function's: an earlier run's files (its manifest lists them) and the
    # staging directories an interrupted run left behind.
    written_before = {f for f in (previous or {}).get("files", ()) if isinstance(f, str)}
    present = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    foreign = {n for n in present if n not in written_before and not n.startswith(".synth-")}
    clashes = sorted(foreign & set(names.values()))
    if clashes:
        raise DataError(
            f"{out_dir}: holds {', '.join(clashes)}, which write_synthetic did not write; it never "
            f"replaces such a file: move it or choose another directory"
        )
    here = Path.cwd().resolve()
    swappable = out_dir.resolve() not in (here, *here.parents)
    if not foreign and swappable:
        # Nothing else there: write the whole set beside it and swap it in at once.
        with atomic_dir(out_dir) as tmp:
            for role, text in contents.items():
                with open(tmp / names[role], "w", encoding="utf-8", newline="\n") as f:
                    f.write(text)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out_dir))
        try:
            for role, text in contents.items():
                with open(staging / names[role], "w", encoding="utf-8", newline="\n") as f:
                    f.write(text)
            for role in contents:
                os.replace(staging / names[role], out_dir / names[role])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for stale in written_before - set(names.values()):
            # Only plain file names that an earlier run listed; never a path outside out_dir.
            if Path(stale).name == stale:
                (out_dir / stale).unlink(missing_ok=True)
    logger.info(
        "wrote %d authors (%d forget, %d QA each) to %s",
        n_authors,
        n_forget,
        questions_per_author,
        out_dir,
    )
    return {role: out_dir / names[role] for role in contents}
