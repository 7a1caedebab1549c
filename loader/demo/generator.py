"""Deterministic synthetic SmartDiet source data (the MongoDB side of MAPPING.md section 2).

`generate(size, seed)` builds every source collection with the application's relations (patients,
coachings, one logbook quiz per expected template and day, cloned question instances, answers) and,
at low rates, the messy shapes the loader must survive (C5 reference shapes, dangling references,
missing optional fields, legacy field names, out-of-range values). Every quirk occurs at least once
even for small sizes (see `_Quirks`). The worked example of MAPPING.md 4.9 is always included; its
ids are found with `worked_example_ids`. `insert(db, data)` writes the result into MongoDB.

All ids and dates come from one `random.Random(seed)`: the same (size, seed) gives the same data.
Dates are naive UTC datetimes with millisecond precision (what pymongo returns by default).
"""

from __future__ import annotations

import copy
import random
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from bson import ObjectId

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["COLLECTIONS", "WORKED_EXAMPLE_EMAIL", "generate", "insert", "worked_example_ids"]

# Section 2 order; also the key order of `generate`'s result.
COLLECTIONS: tuple[str, ...] = (
    "ingredients", "appointmenttypes", "companies", "offers", "categories", "targets", "recipes",
    "quizzs", "quizzquestions", "contents", "events", "menus", "users", "menurecipes",
    "menu_recipes", "messages", "coachings", "coachinglogbooks", "userquizzs",
    "userquizzquestions", "items", "appointments", "periods", "days",
)

WORKED_EXAMPLE_EMAIL = "xavier.exemple@smartdiet-demo.fr"

PARIS = ZoneInfo("Europe/Paris")
_EPOCH = datetime(1970, 1, 1)
_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

# ----------------------------------------------------------------------------- enumerations

LOGBOOK, ASSESSMENT, PROGRESS, IMPACT, PATIENT = (
    "QUIZZ_TYPE_LOGBOOK", "QUIZZ_TYPE_ASSESSMENT", "QUIZZ_TYPE_PROGRESS", "QUIZZ_TYPE_IMPACT",
    "QUIZZ_TYPE_PATIENT",
)
BOOLEAN, SCALE, TEXT, DOCUMENT, NUMERIC, ENUM_SINGLE, ENUM_MULTIPLE, TEXT_MULTIPLE = (
    f"QUIZZ_QUESTION_TYPE_{t}" for t in (
        "BOOLEAN", "SCALE_1_10", "TEXT", "DOCUMENT", "NUMERIC", "ENUM_SINGLE", "ENUM_MULTIPLE",
        "TEXT_MULTIPLE",
    )
)
NOT_STARTED, STARTED, FINISHED, DROPPED, STOPPED = (
    f"COACHING_STATUS_{s}" for s in ("NOT_STARTED", "STARTED", "FINISHED", "DROPPED", "STOPPED")
)
MENU, WEBINAR, INDIVIDUAL_CHALLENGE, COLLECTIVE_CHALLENGE = (
    "menu", "webinar", "individualChallenge", "collectiveChallenge",
)

# A question template: (type, title, option texts for enum questions).
_QuestionSpec = tuple[str, str, tuple[str, ...]]
_YES_NO = ("Oui", "Non")
_FOOD_GROUPS = ("Fruits", "Légumes", "Féculents", "Protéines", "Produits laitiers", "Sucreries 🍬")

# The worked example (4.9) relies on the first three templates' question order.
_LOGBOOK_TEMPLATES: tuple[tuple[str, tuple[_QuestionSpec, ...]], ...] = (
    ("Petit-déjeuner", (
        (TEXT_MULTIPLE, "Qu'avez-vous mangé ?", ()),
        (SCALE, "Niveau de faim avant le repas", ()),
        (ENUM_SINGLE, "Avez-vous pris le temps de manger ?", _YES_NO),
    )),
    ("Dîner", (
        (TEXT, "Qu'avez-vous mangé au dîner ?", ()),
        (BOOLEAN, "Avez-vous mangé devant un écran ?", ()),
        (NUMERIC, "Combien de verres d'eau aujourd'hui ?", ()),
    )),
    ("Collation", (
        (TEXT_MULTIPLE, "Qu'avez-vous grignoté ?", ()),
        (SCALE, "Envie de sucre", ()),
        (BOOLEAN, "Collation prévue ?", ()),
    )),
    ("Déjeuner", (
        (TEXT_MULTIPLE, "Qu'avez-vous mangé ?", ()),
        (ENUM_MULTIPLE, "Quels groupes d'aliments ?", _FOOD_GROUPS),
        (NUMERIC, "Durée du repas (minutes)", ()),
        (DOCUMENT, "Photo de votre assiette 📷", ()),
        (SCALE, "Satiété après le repas", ()),
    )),
)
_OTHER_TEMPLATES: tuple[tuple[str, str, tuple[_QuestionSpec, ...]], ...] = (
    ("Bilan initial", ASSESSMENT, (
        (NUMERIC, "Votre poids (kg)", ()),
        (NUMERIC, "Votre taille (cm)", ()),
        (ENUM_MULTIPLE, "Vos objectifs", ("Perdre du poids", "Mieux dormir", "Plus d'énergie ⚡")),
        (TEXT, "Vos habitudes alimentaires", ()),
        (DOCUMENT, "Dernier bilan sanguin", ()),
        (BOOLEAN, "Pratiquez-vous une activité physique ?", ()),
    )),
    ("Quiz de progression", PROGRESS, (
        (SCALE, "Votre forme cette semaine", ()),
        (TEXT, "Ce qui a changé", ()),
        (ENUM_SINGLE, "Objectif atteint ?", ("Oui", "Non", "En partie")),
    )),
    ("Questionnaire d'impact", IMPACT, (
        (SCALE, "Satisfaction globale", ()),
        (BOOLEAN, "Recommanderiez-vous SmartDiet ?", ()),
        (TEXT, "Un mot pour votre diététicienne 💬", ()),
    )),
    ("Questionnaire patient 患者", PATIENT, (
        (TEXT, "Allergies connues", ()),
        (ENUM_SINGLE, "Régime particulier", ("Aucun", "Végétarien", "Végan", "Sans gluten")),
    )),
)
_QUESTION_TYPES = (BOOLEAN, SCALE, TEXT, DOCUMENT, NUMERIC, ENUM_SINGLE, ENUM_MULTIPLE, TEXT_MULTIPLE)

# ----------------------------------------------------------------------------- vocabulary

_FOODS = (
    "pain", "café", "thé vert", "œuf à la coque", "yaourt nature", "crème brûlée",
    "pâtes complètes", "riz basmati", "saumon fumé", "poulet rôti", "ratatouille",
    "salade niçoise", "fromage de chèvre", "pomme", "banane", "clémentine", "crêpe", "croissant",
    "pain d'épices", "muesli", "jus d'orange", "soupe miso", "豆腐", "寿司", "キムチ", "抹茶ラテ",
    "avocado toast 🥑", "smoothie 🍓", "pizza 🍕", "café crème ☕", "bœuf bourguignon",
    "lentilles corail", "épinards", "noix de cajou", "chocolat noir 70 %", "tarte aux pommes",
)
_TEXT_ANSWERS = (
    "Salade", "Soupe de légumes et pain complet", "Poisson grillé, haricots verts",
    "Rien de spécial", "Pâtes à la carbonara 🍝", "Repas au restaurant d'entreprise",
    "焼き魚と味噌汁", "Omelette aux champignons", "Sandwich jambon-beurre", "Je n'avais pas faim 😕",
)
_COMMENTS = (
    "Très bon repas 😊", "Trop mangé ce soir", "Repas pris sur le pouce",
    "Difficile de résister au dessert 🍰", "RAS",
)
_MESSAGES = (
    "Bonjour, comment s'est passée votre semaine ?", "Merci pour vos conseils 🙏",
    "Pouvez-vous décaler notre rendez-vous ?", "J'ai perdu 1,5 kg 🎉",
    "N'oubliez pas de remplir votre journal alimentaire.", "À jeudi !",
    "Quelles collations me conseillez-vous ?", "你好，谢谢！",
)
_RECIPES = (
    "Velouté de potiron", "Quiche lorraine allégée", "Taboulé libanais", "Poke bowl au saumon 🐟",
    "Curry de pois chiches", "Gratin dauphinois", "Bibimbap 비빔밥", "Ramen 🍜",
    "Clafoutis aux cerises", "Soupe phở", "Tajine de poulet aux citrons confits",
    "Crêpes de sarrasin", "Dahl de lentilles corail",
)
_INGREDIENTS = (
    "Farine de blé T65", "Crème fraîche épaisse", "Œufs", "Pois chiches", "Lait demi-écrémé",
    "Huile d'olive vierge extra", "Sel de Guérande", "Gingembre 生姜", "Citron confit",
    "Épeautre", "Sauce soja", "Pâte miso", "Piment d'Espelette 🌶️", "Beurre doux",
)
_UNITS = ("UNIT_KG", "UNIT_L", "UNIT_G", "UNIT_ML", "UNIT_CL", "UNIT_DL", "UNIT_UNITE")
_COMPANIES = (
    "Société Générale de Diététique", "Boulangerie Ünal & Fils", "Crème & Co 🍦",
    "株式会社さくら", "Atelier Hélène", "Transports Lefèvre", "Mairie de Saint-Étienne",
    "Clinique Sainte-Anne", "Groupe Éco+",
)
_OFFER_LABELS = ("Essentiel", "Sérénité", "Premium ✨", "Découverte")
_CATEGORIES = (
    ("Objectifs", "OBJECTIVE"), ("Spécificités", "SPECIFICITY"), ("Activité physique", "ACTIVITY"),
    ("Foyer", "HOME"), ("Santé", "HEALTH"), ("Coaching", "COACHING"),
)
_EXTRA_CATEGORIES = ("Bien-être 🧘", "Habitudes")
_TARGETS = (
    "Perdre du poids", "Mieux dormir", "Réduire le sucre", "Manger équilibré", "Gérer le stress",
    "Diabète de type 2", "Hypertension", "Végétarien 🌱", "Sans gluten", "Grossesse",
    "Sport & nutrition", "Cholestérol",
)
_CONTENT_NAMES = (
    "Bien lire les étiquettes", "Les protéines végétales 🌱", "Manger en pleine conscience",
    "L'assiette idéale", "5 recettes express", "Le sucre caché", "睡眠と食事",
)
_CONTENT_TYPES = ("ARTICLE", "VIDEO", "PODCAST", "INFOGRAPHY", "DOCUMENT")
_EVENT_NAMES = {
    MENU: "Menu de la semaine",
    WEBINAR: "Webinar : l'alimentation anti-stress",
    INDIVIDUAL_CHALLENGE: "Défi 10 000 pas 🚶",
    COLLECTIVE_CHALLENGE: "Challenge hydratation 💧",
}
_APPOINTMENT_TYPES = (
    ("Bilan initial", 60), ("Suivi", 45), ("Suivi express", 30), ("Bilan final", 45),
    ("Téléconsultation 🎥", 30),
)
_FIRSTNAMES = (
    "Léa", "Zoé", "Éloïse", "Hélène", "François", "Chloé", "Aïcha", "Jérôme", "Noël", "Inès",
    "Mathéo", "Camille", "Björn", "Siobhán", "美咲", "Thomas", "Anaïs", "Loïc",
)
_LASTNAMES = (
    "Dupont", "Lefèvre", "Nguyễn", "Müller", "O'Connor", "山田", "García-Núñez", "Martin",
    "Bernard", "Leroy", "Moreau", "Fournier", "Girard", "Da Silva", "Benali",
)
_INSURERS = ("MGEN", "Harmonie Mutuelle", "Malakoff Humanis", "AG2R La Mondiale")
_POPULATIONS = ("Salariés", "Ayants droit", "Retraités")

# ----------------------------------------------------------------------------- rates

# Reference shapes of C5. Keyed fields (arrays with a table-specific key) also get {key: oid}.
_SHAPES_TEXT = (("hex", 0.006), ("HEX", 0.002))
_SHAPES = (("embedded", 0.01),) + _SHAPES_TEXT
_SHAPES_KEYED = (("embedded_key", 0.008),) + _SHAPES
# The only fields that ever hold a bad (unresolvable) reference, one document each: a handful in
# total, and never in the fields that link logbooks together.
_BAD_REFERENCES: dict[str, Any] = {
    "users.company": "not-an-id",
    "users.registered_events": 42,
    "contents.viewed_by": {},
    "days.main_logbooks": "logbook?",
    "messages.receiver": 0,
    "coachings.diet": {},
}
_DANGLING_RATE = 0.005
_CL_WITHOUT_USER_RATE = 7_904 / 563_086  # as measured in production (section 2)
_LOGBOOK_ANSWERED_RATE = 0.45
_QUESTION_ANSWERED_RATE = 0.8


# ----------------------------------------------------------------------------- time helpers

def _dt(ms: int) -> datetime:
    """Naive UTC datetime of an epoch-milliseconds instant."""
    return _EPOCH + timedelta(milliseconds=ms)


def _ms(moment: datetime) -> int:
    """Epoch milliseconds of a naive UTC or tz-aware datetime."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@lru_cache(maxsize=None)
def _paris_midnight_ms(day: date) -> int:
    """The instant of local midnight in Paris (DST-aware), as the application stores a day."""
    return _paris_time_ms(day, 0, 0)


def _paris_time_ms(day: date, hour: int, minute: int) -> int:
    return _ms(datetime(day.year, day.month, day.day, hour, minute, tzinfo=PARIS))


_CATALOGUE_SPAN = (_ms(datetime(2020, 9, 1)), _ms(datetime(2021, 6, 30)))
_FIRST_COACHING_DAY = date(2022, 1, 3)
_COACHING_DAYS_SPAN = (date(2025, 6, 30) - _FIRST_COACHING_DAY).days


# ----------------------------------------------------------------------------- quirks

_FORCE_FROM = 1  # opportunity index from which a quirk that has not occurred yet is forced


class _Quirks:
    """Decides, at each opportunity, whether a rare variant occurs.

    A variant occurs with its rate; in addition, from the second opportunity of a quirk on, a
    variant that has not occurred yet is forced, so that every variant with at least two
    opportunities occurs at least once (rate 0 therefore means "exactly once").
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: dict[str, int] = {}
        self._pending: dict[str, list[str]] = {}
        self.enabled = True

    def pick(self, name: str, variants: tuple[tuple[str, float], ...]) -> str | None:
        """The variant occurring at this opportunity of quirk `name`, or None (normal case)."""
        if not self.enabled:
            return None
        seen = self._seen.get(name, 0)
        self._seen[name] = seen + 1
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = [label for label, _ in variants]
        draw = self._rng.random()
        chosen: str | None = None
        for label, rate in variants:
            if draw < rate:
                chosen = label
                break
            draw -= rate
        if pending and seen >= _FORCE_FROM and chosen not in pending:
            chosen = pending[0]
        if chosen in pending:
            pending.remove(chosen)
        return chosen

    def hit(self, name: str, rate: float) -> bool:
        return self.pick(name, ((name, rate),)) is not None

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """No quirk at all (and no opportunity counted) inside the block."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True


# ----------------------------------------------------------------------------- templates

@dataclass
class _TemplateQuestion:
    id: ObjectId
    type: str
    options: list[ObjectId]


@dataclass
class _Template:
    id: ObjectId
    name: str
    type: str
    questions: list[_TemplateQuestion]


# ----------------------------------------------------------------------------- generator

class _Generator:
    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.quirks = _Quirks(self.rng)
        self.data: dict[str, list[dict]] = {name: [] for name in COLLECTIONS}
        self.count = 0  # documents generated so far
        self.emails = 0  # makes every email unique
        # Ids the later collections draw their references from (filled in `run` order).
        self.appointment_type_ids: list[ObjectId] = []
        self.company_ids: list[ObjectId] = []
        self.offer_ids: list[ObjectId] = []
        self.target_ids: list[ObjectId] = []
        self.recipe_ids: list[ObjectId] = []
        self.content_ids: list[ObjectId] = []
        self.menu_events: list[dict] = []
        self.registrable_event_ids: list[ObjectId] = []
        self.diet_ids: list[ObjectId] = []
        self.logbook_templates: dict[str, _Template] = {}
        self.templates_by_type: dict[str, _Template] = {}

    # --- building blocks

    def scaled(self, per_million: int, minimum: int) -> int:
        return max(minimum, self.size * per_million // 1_000_000)

    def oid(self, ms: int) -> ObjectId:
        """An ObjectId whose timestamp prefix is `ms` (like the application's), random otherwise."""
        return ObjectId((ms // 1000).to_bytes(4, "big") + self.rng.randbytes(8))

    def between(self, lo: int, hi: int) -> int:
        return lo + int(self.rng.random() * (hi - lo))

    def add(self, collection: str, doc: dict) -> dict:
        self.data[collection].append(doc)
        self.count += 1
        return doc

    def new(self, collection: str, created: int, updated: int, fields: dict) -> dict:
        doc = {
            "_id": self.oid(created),
            "creation_date": _dt(created),
            "update_date": _dt(updated),
            "__v": 0 if updated == created else 1 + int(self.rng.random() * 3),
        }
        doc.update(fields)
        return self.add(collection, doc)

    def catalogue_stamps(self) -> tuple[int, int]:
        created = self.between(*_CATALOGUE_SPAN)
        return created, self.edited(created, 0.5, 200 * _DAY)

    def edited(self, created: int, probability: float, max_delay: int) -> int:
        """update_date: unchanged, or a later save with the given probability."""
        if self.rng.random() < probability:
            return created + 1 + int(self.rng.random() * max_delay)
        return created

    def ref(self, field_name: str, oid: ObjectId, key: str | None = None,
            embedded: bool = True) -> Any:
        """A reference in one of the C5 shapes (mostly a plain ObjectId)."""
        variants = (_SHAPES_KEYED if key else _SHAPES) if embedded else _SHAPES_TEXT
        if field_name in _BAD_REFERENCES:
            variants += (("bad", 0.0),)
        shape = self.quirks.pick(field_name, variants)
        if shape is None:
            return oid
        if shape == "embedded_key":
            return {key: oid}
        if shape == "embedded":
            return {"_id": oid}
        if shape == "hex":
            return str(oid)
        if shape == "HEX":
            return str(oid).upper()
        return copy.copy(_BAD_REFERENCES[field_name])

    def refs(self, field_name: str, oids: list[ObjectId], key: str | None = None) -> list[Any]:
        """An array of references; rarely its first element is repeated (duplicate_in_source)."""
        elements = [self.ref(field_name, oid, key) for oid in oids]
        if elements and self.quirks.hit(f"{field_name}.duplicate", 0.001):
            elements.append(copy.copy(elements[0]))
        return elements

    def maybe_dangling(self, field_name: str, oid: ObjectId) -> ObjectId:
        """Rarely replace a reference by the id of a document that does not exist."""
        if self.quirks.hit(f"dangling:{field_name}", _DANGLING_RATE):
            return self.oid(self.between(*_CATALOGUE_SPAN))
        return oid

    def name_variant(self, names: tuple[str, ...], index: int) -> str:
        base = names[index % len(names)]
        return base if index < len(names) else f"{base} n°{index // len(names) + 1}"

    # --- catalogue (order 1 collections, events, menus, staff)

    def ingredients(self) -> None:
        for i in range(self.scaled(500, 5)):
            name = self.name_variant(_INGREDIENTS, i)
            if self.quirks.hit("long_name", 0.0):  # > VARCHAR(255): value_too_long
                name = ("Ingrédient au nom interminable, " * 10).rstrip(", ")
            created, updated = self.catalogue_stamps()
            self.new("ingredients", created, updated, {
                "name": name, "unit": self.rng.choice(_UNITS),
                "picture": f"https://cdn.smartdiet-demo.fr/ingredients/{i}.png",
            })

    def appointment_types(self) -> None:
        for i, (title, minutes) in enumerate(_APPOINTMENT_TYPES):
            created, updated = self.catalogue_stamps()
            doc = self.new("appointmenttypes", created, updated,
                           {"title": title, "duration": minutes, "smartagenda_id": 100 + i})
            self.appointment_type_ids.append(doc["_id"])

    def companies(self) -> None:
        for i in range(self.scaled(100, 3)):
            created, updated = self.catalogue_stamps()
            doc = self.new("companies", created, updated, {
                "name": self.name_variant(_COMPANIES, i), "code": f"C{i:05d}",
                "siret": f"{self.rng.getrandbits(40):014d}",
            })
            self.company_ids.append(doc["_id"])

    def offers(self) -> None:
        for i in range(self.scaled(100, 6)):
            months = self.rng.choice((1, 3, 6, 12))
            duration: Any = 30 * months
            credit: Any = self.rng.choice((0, 3, 6, 12))
            duration_quirk = self.quirks.pick(
                "offers.duration", (("double", 0.1), ("out_of_range", 0.0)))
            if duration_quirk == "double":
                duration = float(duration)
            elif duration_quirk == "out_of_range":
                duration = 100_000  # beyond SMALLINT
            credit_quirk = self.quirks.pick(
                "offers.coaching_credit", (("double", 0.05), ("half", 0.0), ("string", 0.0)))
            if credit_quirk == "double":
                credit = float(credit)
            elif credit_quirk == "half":
                credit = 12.5  # rounds half away from zero to 13
            elif credit_quirk == "string":
                credit = "12"
            created, updated = self.catalogue_stamps()
            doc = self.new("offers", created, updated, {
                "name": f"Offre {_OFFER_LABELS[i % len(_OFFER_LABELS)]} {months} mois",
                "duration": duration, "coaching_credit": credit,
                "price": round(29.9 * months, 2),
                "company": self.rng.choice(self.company_ids),
            })
            self.offer_ids.append(doc["_id"])

    def categories_and_targets(self) -> None:
        category_ids = []
        extras = [(name, self.rng.choice(_CATEGORIES)[1]) for name in _EXTRA_CATEGORIES]
        for i, (name, category_type) in enumerate(_CATEGORIES + tuple(extras)):
            fields = {"name": name, "type": category_type}
            if i >= len(_CATEGORIES) and self.quirks.hit("category_without_type", 0.1):
                del fields["type"]  # optional in the app, NOT NULL in the target
            created, updated = self.catalogue_stamps()
            category_ids.append(self.new("categories", created, updated, fields)["_id"])
        for i in range(self.scaled(50, 12)):
            created, updated = self.catalogue_stamps()
            doc = self.new("targets", created, updated, {
                "name": self.name_variant(_TARGETS, i),
                "category": self.ref("targets.category", self.rng.choice(category_ids)),
            })
            self.target_ids.append(doc["_id"])

    def recipes(self) -> None:
        for i in range(self.scaled(250, 6)):
            name = self.name_variant(_RECIPES, i)
            if self.quirks.hit("padded_name", 0.002):
                name = f"  {name} "  # kept as is by the loader (no trimming)
            created, updated = self.catalogue_stamps()
            self.recipe_ids.append(self.new("recipes", created, updated, {"name": name})["_id"])

    def quizz_templates(self) -> None:
        for name, questions in _LOGBOOK_TEMPLATES:
            self.logbook_templates[name] = self.template(name, LOGBOOK, questions)
        for name, quizz_type, questions in _OTHER_TEMPLATES:
            self.templates_by_type[quizz_type] = self.template(name, quizz_type, questions)
        for i in range(self.size // 100_000):  # more catalogue quizzes for big data sets
            specs = tuple((self.rng.choice(_QUESTION_TYPES), f"Question {k + 1} du quiz n°{i + 1}",
                           _YES_NO) for k in range(self.rng.randint(3, 6)))
            self.template(f"Quiz nutrition n°{i + 1}", self.rng.choice((PROGRESS, PATIENT)), specs)
        for i in range(2 + self.size // 200_000):  # archived questions no quiz uses any more
            self.template_question((TEXT, f"Question archivée n°{i + 1}", ()))

    def template(self, name: str, quizz_type: str, specs: tuple[_QuestionSpec, ...]) -> _Template:
        questions = [self.template_question(spec) for spec in specs]
        created, updated = self.catalogue_stamps()
        doc = self.new("quizzs", created, updated, {
            "name": name, "type": quizz_type,
            "questions": self.refs("quizzs.questions", [q.id for q in questions], "question"),
        })
        if quizz_type == LOGBOOK:
            doc["default"] = name == "Petit-déjeuner"
        return _Template(doc["_id"], name, quizz_type, questions)

    def template_question(self, spec: _QuestionSpec) -> _TemplateQuestion:
        question_type, title, option_texts = spec
        created, updated = self.catalogue_stamps()
        doc = self.new("quizzquestions", created, updated, {"title": title, "type": question_type})
        options = []
        if question_type in (ENUM_SINGLE, ENUM_MULTIPLE):
            for text in option_texts:
                fields: dict[str, Any] = {
                    "text": text, "quizzQuestion": self.ref("items.quizzQuestion", doc["_id"])}
                if self.rng.random() < 0.1:
                    fields["description"] = f"Réponse « {text} »"
                    fields["picture"] = f"https://cdn.smartdiet-demo.fr/items/{len(options)}.png"
                options.append(self.new("items", created, created, fields)["_id"])
        return _TemplateQuestion(doc["_id"], question_type, options)

    def contents(self) -> None:
        """Contents; their `viewed_by` arrays are filled once the users exist."""
        for i in range(self.scaled(200, 6)):
            created, updated = self.catalogue_stamps()
            doc = self.new("contents", created, updated, {
                "name": self.name_variant(_CONTENT_NAMES, i),
                "type": _CONTENT_TYPES[i % len(_CONTENT_TYPES)]})
            self.content_ids.append(doc["_id"])

    def events(self) -> None:
        kinds = (MENU, WEBINAR, INDIVIDUAL_CHALLENGE, COLLECTIVE_CHALLENGE)
        for i in range(self.scaled(200, 10)):
            # Every kind twice first: the first of each stays clean, the second may be quirky.
            if i < 2 * len(kinds):
                kind = kinds[i % len(kinds)]
            else:
                kind = self.rng.choices(kinds, (4, 3, 2, 2))[0]
            if i < len(kinds):
                with self.quirks.suspended():
                    doc = self.event(kind, i)
            else:
                doc = self.event(kind, i)
            if kind == MENU:
                self.menu_events.append(doc)
            else:
                self.registrable_event_ids.append(doc["_id"])

    def event(self, kind: str, index: int) -> dict:
        start_day = _FIRST_COACHING_DAY + timedelta(days=int(self.rng.random() * 1200))
        fields: dict[str, Any] = {"name": f"{_EVENT_NAMES[kind]} {index + 1}"}
        if kind == MENU:
            start_day -= timedelta(days=start_day.weekday())  # menus run Monday to Sunday
            start, end = _paris_midnight_ms(start_day), _paris_midnight_ms(
                start_day + timedelta(days=7)) - 1000
            discriminator = self.quirks.pick("events.menu_discriminator", (("kind", 0.05),))
        else:
            start = _paris_time_ms(start_day, self.rng.randint(9, 18), 0)
            end = start + (_HOUR if kind == WEBINAR else self.rng.randint(7, 30) * _DAY)
            discriminator = self.quirks.pick(
                "events.discriminator", (("kind", 0.05), ("none", 0.0)))
        if discriminator is None:
            fields["__t"] = kind
        elif discriminator == "kind":
            fields["kind"] = kind  # C9: readers fall back to `kind`
        fields["start_date"], fields["end_date"] = _dt(start), _dt(end)
        fields["description"] = f"{_EVENT_NAMES[kind]} — inscrivez-vous ! 🎯"
        if kind == COLLECTIVE_CHALLENGE:
            company = self.maybe_dangling("events.company", self.rng.choice(self.company_ids))
            fields["company"] = self.ref("events.company", company)
        elif kind == WEBINAR:
            fields["companies"] = self.rng.sample(self.company_ids, min(2, len(self.company_ids)))
        created = start - self.between(7 * _DAY, 60 * _DAY)
        return self.new("events", created, self.edited(created, 0.3, 5 * _DAY), fields)

    def menu_recipes(self) -> None:
        slots = [(str(day), str(meal)) for day in range(7) for meal in range(2)]
        for menu in self.menu_events:
            created = _ms(menu["creation_date"]) + self.between(_MINUTE, 2 * _DAY)
            for day, meal in self.rng.sample(slots, self.rng.randint(6, len(slots))):
                self.new("menurecipes", created, self.edited(created, 0.2, 3 * _DAY), {
                    "menu": self.ref("menurecipes.menu", menu["_id"]),
                    "recipe": self.ref("menurecipes.recipe", self.rng.choice(self.recipe_ids)),
                    "day": day, "period": meal,
                })

    def legacy_menus(self) -> None:
        """The legacy `menus` / `menu_recipes` collections R1/R2 read (a handful of documents)."""
        shared = {k: self.menu_events[0][k] for k in ("_id", "creation_date", "update_date", "name")}
        shared["update_date"] += timedelta(days=3)  # same id as the event, newer: C11 decides
        shared["__v"] = 1
        self.add("menus", shared)
        legacy_ids = []
        for season in ("hiver", "printemps", "été"):
            created = self.between(_ms(datetime(2020, 1, 1)), _CATALOGUE_SPAN[0])
            legacy_ids.append(self.new("menus", created, created,
                                       {"name": f"Menu {season} 2020"})["_id"])
        for menu_id in legacy_ids:
            created = self.between(_ms(datetime(2020, 1, 1)), _CATALOGUE_SPAN[0])
            self.new("menu_recipes", created, created, {
                "menu": menu_id, "recipe": self.rng.choice(self.recipe_ids), "day": "0",
                "period": "0"})
        # Also present in `menurecipes`: the union is de-duplicated by _id.
        self.add("menu_recipes", copy.deepcopy(self.data["menurecipes"][0]))

    def staff(self) -> None:
        self.diet_ids = [self.user("DIET")["_id"] for _ in range(self.scaled(40, 2))]
        for _ in range(self.scaled(5, 1)):
            self.user("EXTERNAL_DIET")
        for company_id in self.company_ids[::3]:
            self.user("RH", company=company_id)
        for role in ("SUPER_ADMIN", "ADMIN", "SUPPORT"):
            self.user(role)

    # --- users

    def user(self, role: str, company: ObjectId | None = None,
             created: int | None = None) -> dict:
        rng = self.rng
        if created is None:
            created = self.between(*_CATALOGUE_SPAN)
        firstname, lastname = rng.choice(_FIRSTNAMES), rng.choice(_LASTNAMES)
        fields: dict[str, Any] = {
            "firstname": firstname, "lastname": lastname,
            "email": self.email(firstname, lastname, role), "role": role,
        }
        if self.quirks.hit("user_without_lastname", 0.003):
            del fields["lastname"]
        if company is not None:
            company = self.maybe_dangling("users.company", company)
            fields["company"] = self.ref("users.company", company)
        if role == "CUSTOMER":
            self.customer_fields(fields, created)
        if rng.random() < 0.3:
            fields["phone"] = "+33 6 " + " ".join(str(rng.randint(10, 99)) for _ in range(4))
        return self.new("users", created, self.edited(created, 0.6, 300 * _DAY), fields)

    def email(self, firstname: str, lastname: str, role: str) -> str:
        self.emails += 1
        domain = "smartdiet-demo.fr" if role != "CUSTOMER" else self.rng.choice(
            ("gmail.com", "orange.fr", "free.fr", "laposte.net"))
        return f"{_ascii_slug(firstname)}.{_ascii_slug(lastname)}.{self.emails}@{domain}"

    def customer_fields(self, fields: dict[str, Any], created: int) -> None:
        rng, quirks = self.rng, self.quirks
        birth = quirks.pick("users.birth", (("birthday", 0.7), ("birthdate", 0.03)))
        if birth is not None:  # birthday is the app's name; birthdate only R1/R2's
            born = date(1950, 1, 1) + timedelta(days=int(rng.random() * 20_000))
            fields[birth] = _dt(_paris_midnight_ms(born))
        if quirks.hit("users.insurer", 0.05):
            fields["insurer"] = rng.choice(_INSURERS)
        if quirks.hit("users.population", 0.05):
            fields["population"] = rng.choice(_POPULATIONS)
        if quirks.hit("users.sso_id", 0.03):
            fields["sso_id"] = f"sso|{rng.getrandbits(48):012x}"
        self.registered_events(fields, created)
        for array, probability in (("targets", 0.5), ("specificity_targets", 0.3),
                                   ("health_targets", 0.2)):
            shapes = (("filled", probability), ("empty", 0.05))
            if array == "health_targets":
                shapes += (("not_an_array", 0.0),)  # a bare id instead of an array: bad_reference
            shape = quirks.pick(f"users.{array}.array", shapes)
            if shape == "not_an_array":
                fields[array] = self.target_ids[0]
            elif shape is not None:
                chosen = rng.sample(self.target_ids, rng.randint(1, 3) if shape == "filled" else 0)
                fields[array] = self.refs(f"users.{array}", chosen)

    def registered_events(self, fields: dict[str, Any], created: int) -> None:
        shape = self.quirks.pick("users.registered_events.array", (("missing", 0.3), ("empty", 0.1)))
        if shape == "missing":
            return
        elements: list[Any] = []
        if shape is None:
            events = self.rng.sample(self.registrable_event_ids,
                                     min(len(self.registrable_event_ids), self.rng.randint(1, 3)))
            elements = [self.registration(event_id, created) for event_id in events]
            if self.quirks.hit("users.registered_events.duplicate", 0.03):
                again = created + 40 * _DAY  # registered twice: the first date wins (3.16)
                elements.append({"_id": self.oid(again), "event": events[0], "date": _dt(again)})
        fields["registered_events"] = elements

    def registration(self, event_id: ObjectId, at: int) -> Any:
        """The app stores {_id, event, date}; the seeds describe bare ObjectIds: both occur."""
        if self.quirks.hit("users.registered_events.bare", 0.25):
            return event_id
        at += self.between(0, 30 * _DAY)
        # The event inside may still be a hex string or bad (C5 normalises recursively).
        event = self.ref("users.registered_events", event_id, embedded=False)
        return {"_id": self.oid(at), "event": event, "date": _dt(at)}

    def fill_viewed_by(self) -> None:
        user_ids = [u["_id"] for u in self.data["users"]]
        most = min(len(user_ids), 1 + len(user_ids) // 3)
        for content in self.data["contents"]:
            shape = self.quirks.pick("contents.viewed_by.array", (("missing", 0.1), ("empty", 0.1)))
            if shape == "missing":
                continue
            readers = [] if shape == "empty" else self.rng.sample(
                user_ids, self.rng.randint(1, most))
            viewed_by = [self.ref("contents.viewed_by", u, "user") for u in readers]
            if viewed_by and self.quirks.hit("contents.viewed_by.duplicate", 0.05):
                viewed_by.append(viewed_by[0])
            content["viewed_by"] = viewed_by

    # --- quizzes

    def clone(self, template: _Template, created: int, answer_rate: float,
              without_questions: bool = False) -> tuple[dict, list[dict]]:
        """A userquizz cloned from `template`, and its cloned (maybe answered) questions."""
        questions = [] if without_questions else [
            self.user_question(q, created, self.rng.random() < answer_rate)
            for q in template.questions]
        quizz = self.new("userquizzs", created, created, {
            "quizz": self.ref("userquizzs.quizz", template.id), "name": template.name,
            "type": template.type,
            "questions": self.refs("userquizzs.questions", [q["_id"] for q in questions], "question"),
        })
        return quizz, questions

    def user_question(self, template_question: _TemplateQuestion, created: int,
                      answered: bool) -> dict:
        # The seeds and R1's tests call the template link `quizzQuestion`.
        key = "quizzQuestion" if self.quirks.hit("legacy_quizzQuestion_key", 0.02) \
            else "quizz_question"
        answered_at = created + self.between(10 * _MINUTE, 20 * _HOUR) if answered else created
        question = self.new("userquizzquestions", created, answered_at, {
            key: self.ref("userquizzquestions.quizz_question", template_question.id)})
        if answered:
            self.answer(question, template_question, answered_at)
        return question

    def answer(self, question: dict, template_question: _TemplateQuestion, at: int) -> None:
        """Set the answer field matching the question type (or create free-text items)."""
        rng = self.rng
        question_type = template_question.type
        if question_type == BOOLEAN:
            question["boolean_answer"] = rng.random() < 0.5
        elif question_type == SCALE:
            question["scale_1_10_answer"] = rng.randint(1, 10)
        elif question_type == TEXT:
            question["text_answer"] = rng.choice(_TEXT_ANSWERS)
        elif question_type == DOCUMENT:
            question["document_answer"] = \
                f"https://files.smartdiet-demo.fr/uploads/{question['_id']}.jpg"
        elif question_type == NUMERIC:
            if self.quirks.hit("numeric_answer.double", 0.4):
                question["numeric_answer"] = rng.randint(100, 220) / 2  # 72.5, 80.0, ...
            else:
                question["numeric_answer"] = rng.randint(0, 12)
        elif question_type == ENUM_SINGLE:
            question["single_enum_answer"] = self.ref(
                "userquizzquestions.single_enum_answer", self.option(rng.choice(template_question.options), at))
        elif question_type == ENUM_MULTIPLE:
            chosen = [self.option(o, at) for o in rng.sample(template_question.options,
                                                             rng.randint(1, len(template_question.options)))]
            question["qcm_answers"] = [self.ref("userquizzquestions.qcm_answers", o) for o in chosen]
        elif question_type == TEXT_MULTIPLE:
            for k in range(rng.randint(1, 3)):
                text = "" if self.quirks.hit("empty_item_text", 0.03) else rng.choice(_FOODS)
                self.answer_item(question["_id"], text, at + k * 1000)
        if self.quirks.hit("comment", 0.03):
            question["comment"] = rng.choice(_COMMENTS)

    def option(self, item_id: ObjectId, at: int) -> ObjectId:
        """A chosen option item; rarely one that was deleted since (answer_item_missing, 4.4)."""
        return self.oid(at) if self.quirks.hit("answer_option_deleted", 0.0005) else item_id

    def answer_item(self, question_id: ObjectId, text: str, at: int) -> dict:
        fields: dict[str, Any] = {
            "text": text, "userQuizzQuestion": self.ref("items.userQuizzQuestion", question_id)}
        if self.quirks.hit("items.updated_by", 0.01):
            fields["updated_by"] = self.rng.choice(self.diet_ids)
        return self.new("items", at, at, fields)

    # --- coachings

    def coaching_cluster(self, budget: int) -> None:
        """One patient's coaching and everything hanging from it.

        `budget` (documents still wanted) caps the number of logbook days, so that the total stays
        close to the requested size.
        """
        rng, quirks = self.rng, self.quirks
        start_day = _FIRST_COACHING_DAY + timedelta(days=int(rng.random() * _COACHING_DAYS_SPAN))
        start = _paris_midnight_ms(start_day)
        created = start - self.between(_HOUR, 10 * _DAY)
        user = self.user("CUSTOMER", rng.choice(self.company_ids),
                         created - self.between(_HOUR, 30 * _DAY))
        if rng.random() < 0.4:  # patients who never started a coaching
            self.user("CUSTOMER", rng.choice(self.company_ids), created)
        if quirks.hit("coaching_not_started", 0.08):
            status = NOT_STARTED
        else:
            status = rng.choices((STARTED, FINISHED, DROPPED, STOPPED), (45, 30, 15, 10))[0]
        diet = rng.choice(self.diet_ids)
        fields: dict[str, Any] = {
            "user": self.ref("coachings.user", user["_id"]),
            "offer": self.ref("coachings.offer", rng.choice(self.offer_ids)),
            "status": status,
        }
        if rng.random() < 0.3:
            fields["reasons"] = rng.sample(self.target_ids, 2)
        n_days = 0
        if status != NOT_STARTED:  # a coaching without diet nor assessment is not started
            fields["diet"] = self.ref("coachings.diet", self.maybe_dangling("coachings.diet", diet))
            assessment, _ = self.clone(self.templates_by_type[ASSESSMENT], start, 0.9)
            fields["assessment_quizz"] = self.ref("coachings.assessment_quizz", assessment["_id"])
            n_days = min(rng.randint(3, 16), max(1, budget // 25))
        coaching = self.new("coachings", created, self.edited(created, 0.8, 60 * _DAY), fields)
        if status in (FINISHED, STOPPED):
            self.clone(self.templates_by_type[IMPACT], start + (n_days + 1) * _DAY, 0.7)
        if rng.random() < 0.3:
            self.clone(self.templates_by_type[PROGRESS], start + n_days * _DAY // 2, 0.6)
        periods = self.periods(coaching["_id"], created, n_days, status)
        templates = list(self.logbook_templates.values())
        if rng.random() < 0.3:
            templates.pop(rng.randrange(len(templates)))  # not every template is expected
        for day_index in range(n_days):
            day = start_day + timedelta(days=day_index)
            logbooks = [self.logbook(t, day, user["_id"], coaching["_id"]) for t in templates]
            self.day(periods[day_index], day, logbooks, created)
        if n_days:
            self.appointments(coaching["_id"], user["_id"], start_day, n_days, created)
            self.messages(user["_id"], diet, start, n_days)

    def periods(self, coaching_id: ObjectId, created: int, n_days: int,
                status: str) -> list[ObjectId]:
        """Periods covering the coaching days; returns the period id of each day."""
        if n_days == 0:
            self.new("periods", created, created, {
                "number_of_days": 7, "coaching": self.ref("periods.coaching", coaching_id),
                "order": 1, "status": "pending"})
            return []
        cuts = sorted(self.rng.sample(range(1, n_days), min(n_days - 1, self.rng.randint(0, 2))))
        bounds = [0, *cuts, n_days]
        per_day: list[ObjectId] = []
        for order, (first, end) in enumerate(zip(bounds, bounds[1:]), start=1):
            last = order == len(bounds) - 1
            doc = self.new("periods", created, self.edited(created, 0.5, 30 * _DAY), {
                "number_of_days": end - first,
                "coaching": self.ref("periods.coaching", coaching_id), "order": order,
                "status": "active" if last and status == STARTED else "finished",
            })
            per_day += [doc["_id"]] * (end - first)
        return per_day

    def logbook(self, template: _Template, day: date, user_id: ObjectId,
                coaching_id: ObjectId) -> ObjectId:
        """The userquizz of one expected logbook template on one day, and its coaching logbook."""
        quirks = self.quirks
        midnight = _paris_midnight_ms(day)
        created = midnight + self.between(0, 2 * _HOUR)
        # Answered logbooks that break the chain of section 4 (one quirk per logbook): no
        # questions, a listed question or a question template deleted since, no coaching logbook,
        # or a coaching logbook whose user is not in `users`.
        quirk = quirks.pick("logbook", tuple((name, 0.0005) for name in (
            "without_questions", "question_deleted", "template_deleted", "no_coachinglogbook", "unknown_user")))
        answered = quirk is not None or self.rng.random() < _LOGBOOK_ANSWERED_RATE
        quizz, questions = self.clone(template, created, _QUESTION_ANSWERED_RATE if answered else 0.0,
                                      without_questions=quirk == "without_questions")
        if quirk == "question_deleted":
            quizz["questions"].append(self.oid(created))  # question_missing (4.3)
        elif quirk == "template_deleted" and questions:
            link = "quizz_question" if "quizz_question" in questions[0] else "quizzQuestion"
            questions[0][link] = self.oid(created)  # template_missing (4.3)
        elif quirk == "no_coachinglogbook":
            return quizz["_id"]
        elif quirk == "unknown_user":
            user_id = self.oid(created)
        fields = {
            "user": self.ref("coachinglogbooks.user", user_id),
            "day": _dt(midnight),
            "logbook": self.ref("coachinglogbooks.logbook", quizz["_id"]),
            "coaching": self.ref("coachinglogbooks.coaching", coaching_id),
        }
        if quirk is None and quirks.hit("coachinglogbook_without_user", _CL_WITHOUT_USER_RATE):
            del fields["user"]
        self.new("coachinglogbooks", created, created, fields)
        if quirks.hit("duplicate_coachinglogbook", 0.0005):  # two for one userquizz (4.5 step 2)
            later = created + self.between(_MINUTE, _HOUR)
            self.new("coachinglogbooks", later, later, dict(fields))
        return quizz["_id"]

    def day(self, period_id: ObjectId, day: date, logbook_ids: list[ObjectId],
            created: int) -> None:
        rng = self.rng
        midnight = _paris_midnight_ms(day)
        fields: dict[str, Any] = {
            "period": self.ref("days.period", period_id),
            "is_success": rng.random() < 0.6,
            "date": _dt(midnight),
            "contents": self.refs("days.contents", rng.sample(self.content_ids, rng.randint(0, 2)), "content"),
            "main_logbooks": self.refs("days.main_logbooks", logbook_ids, "logbook"),
        }
        if logbook_ids and rng.random() < 0.5:
            fields["userQuizz"] = self.ref("days.userQuizz", logbook_ids[0])
        updated = max(created, midnight + self.between(18 * _HOUR, 30 * _HOUR))
        self.new("days", created, updated, fields)

    def appointments(self, coaching_id: ObjectId, user_id: ObjectId, start_day: date,
                     n_days: int, created: int) -> None:
        rng = self.rng
        starts = sorted(
            _paris_time_ms(start_day + timedelta(days=rng.randint(0, n_days + 14)),
                           rng.randint(8, 18), rng.choice((0, 15, 30, 45)))
            for _ in range(rng.randint(1, 5)))
        for order, start in enumerate(starts, start=1):
            type_index = rng.randrange(len(_APPOINTMENT_TYPES))
            fields: dict[str, Any] = {
                "coaching": self.ref("appointments.coaching", coaching_id),
                "appointment_type": self.ref("appointments.appointment_type",
                                             self.appointment_type_ids[type_index]),
                "start_date": _dt(start),
                "end_date": _dt(start + _APPOINTMENT_TYPES[type_index][1] * _MINUTE),
            }
            # The examined application stores neither user nor validated, and computes order.
            if self.quirks.hit("appointment_stored_fields", 0.1):
                fields.update(user=self.ref("appointments.user", user_id),
                              validated=rng.random() < 0.7, order=order)
            booked = max(created, start - self.between(_DAY, 20 * _DAY))
            self.new("appointments", booked, self.edited(booked, 0.5, 20 * _DAY), fields)

    def messages(self, user_id: ObjectId, diet_id: ObjectId, start: int, n_days: int) -> None:
        rng = self.rng
        for k in range(rng.randint(0, 6)):
            sender, receiver = (user_id, diet_id) if k % 2 else (diet_id, user_id)
            fields: dict[str, Any] = {
                "content": rng.choice(_MESSAGES), "sender": self.ref("messages.sender", sender)}
            if self.quirks.hit("group_message", 0.1):
                fields["group"] = self.oid(start)  # group messages have no receiver
            else:
                receiver = self.maybe_dangling("messages.receiver", receiver)
                fields["receiver"] = self.ref("messages.receiver", receiver)
            sent = start + self.between(0, (n_days + 1) * _DAY)
            self.new("messages", sent, self.edited(sent, 0.1, _HOUR), fields)

    # --- the worked example of MAPPING.md 4.9

    def worked_example(self) -> None:
        """User X with three coaching logbooks on 2024-03-06T23:00:00Z (7 March in Paris)."""
        with self.quirks.suspended():
            day = date(2024, 3, 7)
            midnight = _paris_midnight_ms(day)
            created = midnight - 20 * _DAY
            user = self.user("CUSTOMER", self.company_ids[0], created - 30 * _DAY)
            user.update(firstname="Xavier", lastname="Exemple", email=WORKED_EXAMPLE_EMAIL,
                        birthday=_dt(_paris_midnight_ms(date(1985, 6, 15))))
            coaching = self.new("coachings", created, created, {
                "user": user["_id"], "diet": self.diet_ids[0], "offer": self.offer_ids[0],
                "status": STARTED})
            breakfast, dinner, snack = (self.logbook_templates[n]
                                        for n in ("Petit-déjeuner", "Dîner", "Collation"))
            quizzes, questions = [], []
            for k, template in enumerate((breakfast, dinner, snack)):
                at = midnight + 100 * (k + 1)
                quizz, quizz_questions = self.clone(template, at, 0.0)
                self.new("coachinglogbooks", at, at + (12 * _HOUR if k == 1 else 0), {
                    "user": user["_id"], "day": _dt(midnight), "logbook": quizz["_id"],
                    "coaching": coaching["_id"]})
                quizzes.append(quizz)
                questions.append(quizz_questions)
            (q1, q2, q3), (q4, q5, _), _ = questions
            answered = midnight + 8 * _HOUR
            for k, text in enumerate(("pain", "café", "")):
                self.answer_item(q1["_id"], text, answered + k * 1000)
            q2["scale_1_10_answer"] = 7
            q3["single_enum_answer"] = breakfast.questions[2].options[_YES_NO.index("Oui")]
            q4["text_answer"] = "Salade"
            q5["boolean_answer"] = False
            for question in (q1, q2, q3, q4, q5):
                question["update_date"] = _dt(answered)
                question["__v"] = 1
            period = self.new("periods", created, created, {
                "number_of_days": 1, "coaching": coaching["_id"], "order": 1, "status": "active"})
            self.new("days", created, midnight + 20 * _HOUR, {
                "period": period["_id"], "is_success": False, "date": _dt(midnight),
                "contents": [], "main_logbooks": [q["_id"] for q in quizzes]})

    # --- whole data set

    def run(self) -> dict[str, list[dict]]:
        self.ingredients()
        self.appointment_types()
        self.companies()
        self.offers()
        self.categories_and_targets()
        self.recipes()
        self.quizz_templates()
        self.contents()
        self.events()
        self.menu_recipes()
        self.legacy_menus()
        self.staff()
        self.worked_example()
        while self.count < self.size:
            self.coaching_cluster(self.size - self.count)
        self.fill_viewed_by()
        return self.data


def _ascii_slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_name.lower() if c.isalnum()) or "user"


# ----------------------------------------------------------------------------- public API

def generate(size: int = 20_000, seed: int = 7) -> dict[str, list[dict]]:
    """Collection name -> documents (pymongo-ready dicts), about `size` documents in total."""
    return _Generator(size, seed).run()


def insert(db: Database, data: dict[str, list[dict]], batch_size: int = 5_000) -> dict[str, int]:
    """insert_many per collection (ordered=False), returns documents inserted per collection."""
    inserted: dict[str, int] = {}
    for name, docs in data.items():
        inserted[name] = 0
        for first in range(0, len(docs), batch_size):
            result = db[name].insert_many(docs[first:first + batch_size], ordered=False)
            inserted[name] += len(result.inserted_ids)
    return inserted


def worked_example_ids(data: dict[str, list[dict]]) -> dict[str, ObjectId]:
    """The ids of the MAPPING.md 4.9 worked example inside `data` (as generated, plain ObjectIds).

    Keys: user, coaching, CL1..CL3, UQ-A/UQ-B/UQ-C ("Petit-déjeuner", "Dîner", "Collation"),
    Q1..Q5 (user questions), item:pain, item:café, item:empty (Q1's free-text answers) and
    item:Oui (the template option chosen by Q3).
    """
    user = next(u for u in data["users"] if u.get("email") == WORKED_EXAMPLE_EMAIL)
    logbooks = sorted((cl for cl in data["coachinglogbooks"] if cl.get("user") == user["_id"]),
                      key=lambda cl: cl["creation_date"])
    quizzes = {q["_id"]: q for q in data["userquizzs"]}
    ids: dict[str, ObjectId] = {"user": user["_id"], "coaching": logbooks[0]["coaching"]}
    labels = {"Petit-déjeuner": "UQ-A", "Dîner": "UQ-B", "Collation": "UQ-C"}
    for k, logbook in enumerate(logbooks, start=1):
        ids[f"CL{k}"] = logbook["_id"]
        ids[labels[quizzes[logbook["logbook"]]["name"]]] = logbook["logbook"]
    q1, q2, q3 = quizzes[ids["UQ-A"]]["questions"]
    q4, q5 = quizzes[ids["UQ-B"]]["questions"][:2]
    ids.update(Q1=q1, Q2=q2, Q3=q3, Q4=q4, Q5=q5)
    for item in data["items"]:
        if item.get("userQuizzQuestion") == q1:
            ids[f"item:{item['text'] or 'empty'}"] = item["_id"]
    q3_doc = next(q for q in data["userquizzquestions"] if q["_id"] == q3)
    ids["item:Oui"] = q3_doc["single_enum_answer"]
    return ids
