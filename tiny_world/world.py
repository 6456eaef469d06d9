"""The tiny world's text: fictional entities, news-like documents that state a few of their facts
among filler prose (which names other people, places and numbers, so salient spans are not the
answers), questions about those facts, and unrelated web-like text. Pure Python, seeded."""

import random
from dataclasses import dataclass, field

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "grey",
    "brown",
    "pink",
    "silver",
    "gold",
    "teal",
]
PROFESSIONS = [
    "architect",
    "baker",
    "chemist",
    "pilot",
    "nurse",
    "carpenter",
    "lawyer",
    "painter",
    "farmer",
    "engineer",
    "teacher",
    "surgeon",
    "journalist",
    "librarian",
    "plumber",
    "translator",
    "geologist",
    "photographer",
    "dentist",
    "tailor",
    "sailor",
    "chef",
    "pharmacist",
    "economist",
    "firefighter",
    "gardener",
    "watchmaker",
    "potter",
]
INSTRUMENTS = [
    "violin",
    "cello",
    "piano",
    "flute",
    "trumpet",
    "harp",
    "guitar",
    "drums",
    "clarinet",
    "accordion",
    "oboe",
    "saxophone",
    "banjo",
    "trombone",
]
SPORTS = [
    "tennis",
    "rowing",
    "chess",
    "fencing",
    "cycling",
    "swimming",
    "archery",
    "golf",
    "hockey",
    "badminton",
    "climbing",
    "sailing",
    "judo",
    "squash",
]
PRODUCTS = [
    "glassware",
    "bicycles",
    "cheese",
    "wool",
    "pottery",
    "clocks",
    "furniture",
    "soap",
    "paper",
    "candles",
    "tea",
    "honey",
    "shoes",
    "rope",
    "ceramics",
    "lamps",
    "cider",
    "salt",
    "carpets",
    "maps",
    "violins",
    "tiles",
    "chocolate",
    "pencils",
    "umbrellas",
    "ink",
]
ANIMALS = [
    "Falcons",
    "Wolves",
    "Otters",
    "Herons",
    "Foxes",
    "Badgers",
    "Ravens",
    "Stags",
    "Lynxes",
    "Owls",
    "Hawks",
    "Bears",
    "Eagles",
    "Hares",
    "Swifts",
    "Bulls",
]
COMPANY_KINDS = [
    "Foods",
    "Motors",
    "Textiles",
    "Labs",
    "Shipping",
    "Ceramics",
    "Press",
    "Energy",
    "Instruments",
    "Mills",
    "Pharma",
    "Optics",
    "Brewing",
    "Logistics",
]

ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "sh",
    "th",
    "c",
    "w",
    "j",
    "fl",
]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "m", "rk", "nd", "st", "th"]
TOWN_SUFFIXES = [
    "ford",
    "ton",
    "vale",
    "mouth",
    "field",
    "wick",
    "stead",
    "haven",
    "bury",
    "moor",
    "bridge",
    "dale",
    "holm",
    "port",
]


class NameMaker:
    """Pronounceable invented words, never the same twice in one world (so entities are unique)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used = set()

    def word(self, syllables):
        rng = self.rng
        # open inner syllables keep names pronounceable (and short in tokens)
        parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)]
        return ("".join(parts) + rng.choice(CODAS)).capitalize()

    def unique(self, make):
        for _ in range(1000):
            name = make()
            if name not in self.used and len(name) > 3:
                self.used.add(name)
                return name
        raise RuntimeError("the name space is exhausted; lower the number of entities")

    def person(self):
        return self.unique(lambda: f"{self.word(self.rng.choice([1, 2]))} {self.word(self.rng.choice([2, 3]))}")

    def town(self):
        return self.unique(lambda: self.word(self.rng.choice([1, 2])) + self.rng.choice(TOWN_SUFFIXES))

    def river(self):
        return self.unique(lambda: self.word(2))

    def company(self):
        return self.unique(lambda: f"{self.word(2)} {self.rng.choice(COMPANY_KINDS)}")

    def team(self):
        return self.unique(lambda: f"{self.word(2)} {self.rng.choice(ANIMALS)}")


@dataclass
class Pools:
    """Values that facts and filler draw from; shared by every split so answers are familiar words."""

    people: list
    towns: list
    rivers: list

    @classmethod
    def make(cls, names: NameMaker, n_people, n_towns, n_rivers):
        return cls(
            [names.person() for _ in range(n_people)],
            [names.town() for _ in range(n_towns)],
            [names.river() for _ in range(n_rivers)],
        )


def _year(rng, low, high):
    return str(rng.randint(low, high))


def _count(rng, low, high, step):
    return f"{rng.randrange(low, high, step):,}"


# Per kind: attribute -> (value sampler, fact-sentence templates, question templates).
# Fact templates carry {e} (the entity) and {v} (the value); questions carry {e}.
ATTRIBUTES = {
    "person": {
        "birth_year": (
            lambda rng, p: _year(rng, 1950, 1999),
            [
                "{e} was born in {v}.",
                "Born in {v}, {e} has lived in the region for years.",
                "{e}, who was born in {v}, spoke briefly to the press.",
                "Records show that {e} was born in {v}.",
            ],
            ["In what year was {e} born?", "When was {e} born?"],
        ),
        "hometown": (
            lambda rng, p: rng.choice(p.towns),
            [
                "{e} grew up in {v}.",
                "Raised in {v}, {e} moved away as a teenager.",
                "{e} spent a childhood in {v} before leaving for the city.",
                "{e} comes from {v}.",
            ],
            ["In which town did {e} grow up?", "Where did {e} grow up?"],
        ),
        "profession": (
            lambda rng, p: rng.choice(PROFESSIONS),
            [
                "{e} works as a {v}.",
                "By profession, {e} is a {v}.",
                "{e} has worked as a {v} for most of a decade.",
                "{e}, a {v} by training, joined the panel.",
            ],
            ["What is the profession of {e}?", "What does {e} do for a living?"],
        ),
        "instrument": (
            lambda rng, p: rng.choice(INSTRUMENTS),
            [
                "{e} plays the {v}.",
                "In the evenings, {e} plays the {v} with friends.",
                "{e} learned to play the {v} at school.",
                "Friends say {e} is rarely seen without a {v}.",
            ],
            ["Which instrument does {e} play?", "What instrument does {e} play?"],
        ),
        "sport": (
            lambda rng, p: rng.choice(SPORTS),
            [
                "{e} is a keen {v} player.",
                "At weekends {e} competes in {v}.",
                "{e} took up {v} at the age of twelve.",
                "The favourite sport of {e} is {v}.",
            ],
            ["Which sport does {e} practise?", "What sport does {e} compete in?"],
        ),
    },
    "town": {
        "founded": (
            lambda rng, p: _year(rng, 1820, 1899),
            [
                "{e} was founded in {v}.",
                "Founded in {v}, {e} grew quickly along the old trade road.",
                "The town of {e} dates back to {v}.",
                "Historians say {e} was established in {v}.",
            ],
            ["When was {e} founded?", "In what year was {e} founded?"],
        ),
        "river": (
            lambda rng, p: rng.choice(p.rivers),
            [
                "{e} lies on the {v} river.",
                "The {v} river runs through {e}.",
                "{e} was built where the {v} river bends.",
                "{e} sits on the banks of the {v} river.",
            ],
            ["Which river runs through {e}?", "On which river does {e} lie?"],
        ),
        "mayor": (
            lambda rng, p: rng.choice(p.people),
            [
                "The mayor of {e} is {v}.",
                "{v}, the mayor of {e}, opened the meeting.",
                "{e} elected {v} as mayor.",
                "{e} is led by its mayor, {v}.",
            ],
            ["Who is the mayor of {e}?", "Who leads {e} as mayor?"],
        ),
        "known_for": (
            lambda rng, p: rng.choice(PRODUCTS),
            [
                "{e} is famous for its {v}.",
                "Visitors come to {e} for its {v}.",
                "{e} has long been known for its {v}.",
                "Markets across the country sell {v} from {e}.",
            ],
            ["What is {e} famous for?", "What is {e} known for?"],
        ),
        "population": (
            lambda rng, p: _count(rng, 2000, 60001, 1000),
            [
                "{e} has {v} residents.",
                "About {v} people live in {e}.",
                "The population of {e} is {v}.",
                "{e}, home to {v} people, is growing again.",
            ],
            ["How many people live in {e}?", "What is the population of {e}?"],
        ),
    },
    "company": {
        "founded": (
            lambda rng, p: _year(rng, 1900, 1979),
            [
                "{e} was founded in {v}.",
                "Founded in {v}, {e} started as a small workshop.",
                "{e} has been in business since {v}.",
                "{e} opened its doors in {v}.",
            ],
            ["When was {e} founded?", "In what year was {e} founded?"],
        ),
        "headquarters": (
            lambda rng, p: rng.choice(p.towns),
            [
                "{e} is based in {v}.",
                "The headquarters of {e} are in {v}.",
                "{e} runs its business from {v}.",
                "From its offices in {v}, {e} serves clients abroad.",
            ],
            ["Where is {e} based?", "In which town are the headquarters of {e}?"],
        ),
        "ceo": (
            lambda rng, p: rng.choice(p.people),
            [
                "The chief executive of {e} is {v}.",
                "{v}, who runs {e}, announced the results.",
                "{e} is headed by {v}.",
                "{e} named {v} as its chief executive.",
            ],
            ["Who is the chief executive of {e}?", "Who runs {e}?"],
        ),
        "product": (
            lambda rng, p: rng.choice(PRODUCTS),
            [
                "{e} makes {v}.",
                "The main product of {e} is {v}.",
                "{e} sells {v} to shops in the region.",
                "Shops across the country sell {v} made by {e}.",
            ],
            ["What does {e} make?", "What is the main product of {e}?"],
        ),
        "employees": (
            lambda rng, p: _count(rng, 50, 2001, 50),
            [
                "{e} employs {v} people.",
                "{e} has {v} workers.",
                "The workforce of {e} numbers {v}.",
                "{e}, with {v} staff, is a large employer.",
            ],
            ["How many people does {e} employ?", "How many workers does {e} have?"],
        ),
    },
    "team": {
        "colour": (
            lambda rng, p: rng.choice(COLOURS),
            [
                "{e} play in {v} shirts.",
                "The colour of {e} is {v}.",
                "Fans of {e} wear {v} on match days.",
                "{e} took the field in their usual {v}.",
            ],
            ["What colour do {e} play in?", "What is the colour of {e}?"],
        ),
        "coach": (
            lambda rng, p: rng.choice(p.people),
            [
                "{e} are coached by {v}.",
                "{v}, the coach of {e}, praised the players.",
                "The coach of {e} is {v}.",
                "{e} hired {v} as coach.",
            ],
            ["Who coaches {e}?", "Who is the coach of {e}?"],
        ),
        "home": (
            lambda rng, p: rng.choice(p.towns),
            [
                "{e} play their home games in {v}.",
                "{e} are based in {v}.",
                "The home ground of {e} is in {v}.",
                "{e} moved their home games to {v}.",
            ],
            ["Where do {e} play their home games?", "In which town are {e} based?"],
        ),
        "founded": (
            lambda rng, p: _year(rng, 1880, 1959),
            [
                "{e} were founded in {v}.",
                "Founded in {v}, {e} soon won the regional cup.",
                "{e} have existed since {v}.",
                "The club {e} was formed in {v}.",
            ],
            ["When were {e} founded?", "In what year were {e} founded?"],
        ),
    },
}
KIND_NAMES = {"person": NameMaker.person, "town": NameMaker.town, "company": NameMaker.company, "team": NameMaker.team}

# Filler prose: slots {p} person, {t} town, {n} small number, {y} year, {d} weekday, {m} month,
# {x} entity of the document. Most sentences carry a name, place or number that nobody asks about.
FILLER = [
    "Officials in {t} said on {d} that {n} volunteers had signed up for the spring clean-up.",
    "{p}, a spokesperson for the regional council, declined to comment on the plans.",
    "Forecasters expect heavy rain around {t} until the end of {m}.",
    "Ticket sales for the fair in {t} rose by {n} percent compared with last year.",
    "The committee will meet again in {m} to review the budget.",
    "Local shops reported a busy weekend as visitors arrived from {t} and {t2}.",
    "Traffic on the main road was slow for most of the morning.",
    "Residents have been asked to share their views before the end of {m}.",
    "{p} told reporters that the decision would be made after a public hearing.",
    "A new bus line between {t} and {t2} is expected to open in {y}.",
    "The library in {t} extended its opening hours on {d}.",
    "Police said {n} cars had been stopped during the checks.",
    "Analysts said prices had been stable since {y}.",
    "The school board, chaired by {p}, approved {n} new teaching posts.",
    "Some {n} people attended the concert in the park on {d} evening.",
    "Critics argued that the project had already cost too much.",
    "The old bridge near {t} was closed for repairs in {m}.",
    "{p} and {p2} are expected to speak at the opening ceremony.",
    "The market will move to a new square in {t} after {m}.",
    "Heavy snow in {y} closed the roads for {n} days.",
    "The report, written by {p}, will be published on {d}.",
    "A small crowd gathered outside the town hall on {d}.",
    "It was the first such event since {y}, organisers said.",
    "Volunteers planted {n} trees along the river bank.",
    "Farmers near {t} said the harvest was better than expected.",
    "The museum in {t} will show paintings by {p} until {m}.",
    "Hospital staff in {t} treated {n} patients over the holiday weekend.",
    "Several roads will be closed on {d} for a cycling race.",
    "The council plans to spend more on parks and playgrounds.",
    "Engineers from {t} inspected the water pipes in {m}.",
    "A record {n} runners took part in the marathon.",
    "The weather stayed mild for most of {m}.",
    "The ferry service to {t} was cancelled because of strong winds.",
    "{p} won the local chess tournament for the {ord} time.",
    "Prices at the weekly market rose slightly in {m}.",
    "The station in {t} will get a new platform by {y}.",
    "Students from {t} raised money for a new sports hall.",
    "The festival drew visitors from as far away as {t}.",
    "Most shops in the old town close early on {d}.",
    "A fire at a warehouse in {t} was put out within an hour.",
]
ENTITY_FILLER = {
    "person": [
        "{x} told reporters that more details would follow.",
        "{x} was seen at the market on {d}.",
        "{x} declined to say more about the plans.",
        "Neighbours describe {x} as friendly and quiet.",
        "{x} will appear at a public event in {t} in {m}.",
    ],
    "town": [
        "Visitors to {x} often stop at the old square.",
        "The streets of {x} were busy on {d}.",
        "{x} will host a food market in {m}.",
        "Rents in {x} have risen in recent years.",
        "Roadworks in {x} will continue until {m}.",
    ],
    "company": [
        "Shares of {x} rose slightly on {d}.",
        "{x} plans to hire more staff next year.",
        "{x} declined to comment on the figures.",
        "A spokesperson for {x} said sales were steady.",
        "{x} will open a new office in {t} in {m}.",
    ],
    "team": [
        "{x} won their last match on {d}.",
        "Tickets for the next game of {x} sold out quickly.",
        "{x} will play in {t} in {m}.",
        "Supporters of {x} gathered outside the ground.",
        "{x} are training hard before the cup final.",
    ],
}
OPENERS = [
    "In local news this week,",
    "Reports from the region:",
    "This week's round-up.",
    "News in brief.",
    "From our correspondent:",
    "Around the region today.",
]
ORDINALS = ["second", "third", "fourth", "fifth", "sixth"]


@dataclass
class Fact:
    attribute: str
    value: str


@dataclass
class Entity:
    name: str
    kind: str
    facts: list = field(default_factory=list)


@dataclass
class Doc:
    """A document and, per stated fact, the character span of its value in the text."""

    doc_id: str
    entity: Entity
    text: str
    spans: list  # (Fact, start, end)


class WorldWriter:
    def __init__(self, seed: int, n_people: int, n_towns: int, n_rivers: int):
        self.rng = random.Random(f"tiny-world-{seed}")
        self.names = NameMaker(self.rng)
        self.pools = Pools.make(self.names, n_people, n_towns, n_rivers)

    def entity(self, n_facts):
        kind = self.rng.choice(sorted(ATTRIBUTES))
        name = KIND_NAMES[kind](self.names)
        attributes = self.rng.sample(sorted(ATTRIBUTES[kind]), n_facts)
        facts = [Fact(a, ATTRIBUTES[kind][a][0](self.rng, self.pools)) for a in attributes]
        return Entity(name, kind, facts)

    def _fill(self, template, entity):
        rng, pools = self.rng, self.pools
        p, p2 = rng.sample(pools.people, 2)
        t, t2 = rng.sample(pools.towns, 2)
        return template.format(
            p=p,
            p2=p2,
            t=t,
            t2=t2,
            n=rng.randint(2, 950),
            y=rng.randint(1950, 2023),
            d=rng.choice(WEEKDAYS),
            m=rng.choice(MONTHS),
            ord=rng.choice(ORDINALS),
            x=entity.name if entity else "",
        )

    def filler_sentence(self, entity=None):
        if entity is not None and self.rng.random() < 0.25:
            return self._fill(self.rng.choice(ENTITY_FILLER[entity.kind]), entity)
        return self._fill(self.rng.choice(FILLER), None)

    def document(self, doc_id, entity, words_range, mentions=(1, 1)):
        """Fact sentences at random places among filler, until the word target is reached; each
        fact is stated `mentions` (a [low, high] range) times, each time in other words."""
        rng = self.rng
        target = rng.randint(*words_range)
        facts = []
        for fact in entity.facts:
            templates = ATTRIBUTES[entity.kind][fact.attribute][1]
            if mentions[1] == 1:
                chosen = [rng.choice(templates)]
            else:
                chosen = rng.sample(templates, min(rng.randint(*mentions), len(templates)))
            for template in chosen:
                before, after = template.format(e=entity.name, v="\0").split("\0")
                facts.append((fact, before, after))
        words = sum(len((b + f.value + a).split()) for f, b, a in facts)
        fillers = []
        while words < target:
            fillers.append(self.filler_sentence(entity))
            words += len(fillers[-1].split())
        order = fillers + facts
        rng.shuffle(order)
        if rng.random() < 0.5:
            order.insert(0, rng.choice(OPENERS))
        pieces, spans, length = [], [], 0
        for item in order:
            length += 1 if pieces else 0  # the joining space
            if isinstance(item, tuple):
                fact, before, after = item
                spans.append((fact, length + len(before), length + len(before) + len(fact.value)))
                item = before + fact.value + after
            pieces.append(item)
            length += len(item)
        return Doc(doc_id, entity, " ".join(pieces), spans)

    def questions(self, entity, fact, per_fact):
        templates = ATTRIBUTES[entity.kind][fact.attribute][2]
        chosen = self.rng.sample(templates, min(per_fact, len(templates)))
        return [template.format(e=entity.name) for template in chosen]

    def web_text(self, words_range):
        target = self.rng.randint(*words_range)
        sentences = []
        while sum(len(s.split()) for s in sentences) < target:
            sentences.append(self.filler_sentence())
        return " ".join(sentences)


def qa_rows(writer, doc, questions_per_fact):
    """Questions about each fact of `doc`: answer_start/answer_end locate its first statement,
    answer_spans ("start:end;...") every statement of it."""
    rows, mentions = [], {}
    for fact, start, end in doc.spans:
        mentions.setdefault(id(fact), (fact, []))[1].append((start, end))
    for fact, spans in mentions.values():
        first = min(spans)
        per_fact = writer.rng.randint(*questions_per_fact)
        for question in writer.questions(doc.entity, fact, per_fact):
            rows.append(
                dict(
                    text=doc.text,
                    question=question,
                    answers=fact.value,
                    doc_id=doc.doc_id,
                    answer_start=first[0],
                    answer_end=first[1],
                    answer_spans=";".join(f"{s}:{e}" for s, e in sorted(spans)),
                    entity=doc.entity.name,
                    attribute=fact.attribute,
                )
            )
    return rows


def make_world(cfg):
    """All tables of the world: {file name: list of row dicts}. Entities never cross splits.

    Two disjoint sets of entities get several differently worded documents each, all of which the
    base model reads in pretraining: the QA pairs of the first set (pretrain_qa) are pretrained on
    too, so the model learns to answer about what it read; those of the second form qa_train and
    qa_val, which pretraining never sees, so that QA pre-tuning has something to learn. Each
    stream document (train/val/test) is about an entity of its own that pretraining never names.
    """
    writer = WorldWriter(cfg.seed, cfg.n_value_people, cfg.n_value_towns, cfg.n_value_rivers)
    rng = writer.rng
    words = tuple(cfg.doc_words)
    pretrain_words = tuple(cfg.pretrain_doc_words or cfg.doc_words)
    n_facts = tuple(cfg.facts_per_doc)
    tables = {"pretrain_docs.csv": [], "pretrain_qa.csv": [], "qa_train.csv": [], "qa_val.csv": []}
    n_qa_val = round(cfg.n_qa_entities * cfg.qa_val_fraction)
    n_read = cfg.n_pretrain_entities + cfg.n_qa_entities
    for index in range(n_read):
        entity = writer.entity(rng.randint(*n_facts))
        if index < cfg.n_pretrain_entities:
            qa_file = "pretrain_qa.csv"
        else:
            qa_file = "qa_val.csv" if index >= n_read - n_qa_val else "qa_train.csv"
        for copy in range(cfg.docs_per_pretrain_entity):
            doc = writer.document(f"pre-{index:05d}-{copy}", entity, pretrain_words, tuple(cfg.fact_mentions))
            tables["pretrain_docs.csv"].append(
                dict(text=doc.text, doc_id=doc.doc_id, entity=entity.name, qa_file=qa_file[:-4])
            )
            if copy == 0:
                # every paraphrase states the same facts; the QA rows point at the first one
                tables[qa_file].extend(qa_rows(writer, doc, tuple(cfg.questions_per_fact)))
    for file, n_docs in (("train.csv", cfg.n_train_docs), ("val.csv", cfg.n_val_docs), ("test.csv", cfg.n_test_docs)):
        rows = tables[file] = []
        for index in range(n_docs):
            doc = writer.document(
                f"{file[:-4]}-{index:05d}", writer.entity(rng.randint(*n_facts)), words, tuple(cfg.fact_mentions)
            )
            rows.extend(qa_rows(writer, doc, tuple(cfg.questions_per_fact)))
    tables["web_text.csv"] = [dict(raw_text=writer.web_text(tuple(cfg.web_text_words))) for _ in range(cfg.n_web_texts)]
    return tables


def write_tables(tables, folder):
    import pandas as pd

    for file, rows in tables.items():
        pd.DataFrame(rows).to_csv(folder / file, index=False)


def build_data(cfg, folder, progress=True):
    """The data stage of the build: every CSV into folder/data."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_tables(make_world(cfg), data)
