"""A synthetic task suite for training and checking the synthesizer, shipped in code.

Texts are short (branches of about 10-60 tokens, answers of a few tokens) and answers are
exactly checkable, so a 135M model can learn the tasks in minutes on CPU. Every family
needs information that only the branches hold: the query never contains the answer.

Families, by data role (DESIGN.md 2.8):
  exposure      chat_recall       earlier chat rounds are branches; one of them holds the fact
                tool_lookup       parallel tool calls with results; one answers the query
  aggregation   find_fact         one branch holds the fact, the others distractor facts
                combine_partials  each branch holds parts of a message; join them in order
  distillation  majority_vote     worker solutions; answer with the most common final answer
                verified_candidate worker candidates with checks; answer the one that passed
The distillation families stand in for role (c) (worker trajectories -> what a good text
synthesizer would answer) with a rule as the teacher; real distillation targets come from
a model's text-synthesis outputs and are built by the training layer.

Generalization. ``FAMILIES`` are the families that may be trained on. ``UNSEEN_FAMILIES``
are evaluation-only: they exercise the same abilities in another form and are never
generated for training (``generate(..., "train")`` refuses them):
  aggregation   schedule_lookup   departure boards; the answer is the asked train's time (HH:MM)
  distillation  consensus_vote    people vote for a trip city in prose; the most voted city
Every seen family has two phrasings (``TEMPLATES``): "train" and "heldout". Training rows
always use "train"; held-out rows use "heldout" by default, so they test phrasings never
seen in training (``template="train"`` gives in-distribution held-out rows instead).
``Row.meta["generalization"]`` says which: "in_distribution", "new_template" or
"unseen_family".

Splits, leak-free by construction. Each instance is first rendered with the "train"
phrasing (its canonical form; a template changes wording only, never the random draws).
  - the (family, canonical query, answer) pair hashes to a split (``split_of``);
  - every branch text hashes to a split too (``branch_split``); a training row holds no
    held-out branch at all, and a held-out row's answer branch (the first branch holding the
    answer) is a held-out branch.
So no held-out (question, answer) pair and no held-out answer branch ever occurs in training
rows, in any role (a distractor fact of a training row is never a held-out answer branch).
Where several branches hold the answer (majority_vote), each states the sum with its
operands, so it could only occur in a row with the same answer, and that pair is held out.
Instances that fit neither split are drawn again. ``generate`` also drops duplicate rows
(same query, answer and contexts) within its output, and ``check_no_leak`` verifies any
pair of row lists. ``generate`` draws from a generator seeded by (family, split, seed), so
output is deterministic by seed.

Difficulty is 1, 2 or 3; each family documents what it changes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import re
from collections.abc import Callable, Iterable

from ps_jax.data.rows import Row

SPLITS = ("train", "heldout")
TEMPLATES = ("train", "heldout")  # phrasings; "heldout" is never used for training rows
HELDOUT_PERCENT = 20
DIFFICULTIES = (1, 2, 3)
MAX_BRANCHES = 10  # bounded by the word lists below (distinct names, cities, words)

Instance = tuple[str, str, list[str]]  # (query, answer, contexts)

_NAMES = (
  "Alice Bob Carol Dan Eve Frank Grace Hugo Ivy Jack Kara Liam Mia Noah Olga Paul Quinn "
  "Rosa Sam Tina Uma Victor Wendy Yuri Zoe"
).split()
_COLOURS = "red blue green yellow purple orange pink brown black white grey silver".split()
_CITIES = (
  "Paris Oslo Rome Lima Cairo Tokyo Dublin Madrid Vienna Prague Lisbon Seoul Quito Berlin "
  "Athens Nairobi"
).split()
_GOODS = "apples bread coffee milk rice tea cheese eggs butter honey pasta sugar".split()
_WORDS = (
  "river stone cloud lamp tiger maple ocean candle forest garden rocket pencil window castle "
  "mirror violin desert harbor falcon meadow copper lantern island pepper thunder velvet "
  "orchid glacier"
).split()
# Enough rounds that a 10-branch chat fits after the held-out branches are set aside.
_SMALL_TALK = (
  ("Say hello in French.", "Bonjour!"),
  ("What is the capital of Italy?", "Rome."),
  ("Give me a synonym for quick.", "Fast."),
  ("Translate cat into Spanish.", "Gato."),
  ("Which planet is the largest?", "Jupiter."),
  ("What do bees make?", "Honey."),
  ("Name a fruit that is yellow.", "A banana."),
  ("How many legs does a spider have?", "Eight."),
  ("What colour is the sky on a clear day?", "Blue."),
  ("Tell me an antonym of cold.", "Hot."),
  ("Say thank you in German.", "Danke!"),
  ("What is frozen water called?", "Ice."),
  ("Which animal says moo?", "A cow."),
  ("Give me a word that rhymes with cat.", "Hat."),
  ("What do you call a baby dog?", "A puppy."),
  ("Which season comes after winter?", "Spring."),
  ("What is the opposite of up?", "Down."),
  ("Name a musical instrument with keys.", "A piano."),
  ("What do plants need from the sun?", "Light."),
  ("Which ocean is the largest?", "The Pacific."),
  ("Spell the word dog backwards.", "God."),
  ("What shape has three sides?", "A triangle."),
  ("Which bird is a symbol of peace?", "The dove."),
  ("What is the first letter of the alphabet?", "A."),
)


def _distinct(rng: random.Random, draw: Callable[[], str], used: set[str]) -> str:
  """A value from ``draw`` not in ``used`` (and adds it), so each value names one fact."""
  for _ in range(1000):
    value = draw()
    if value not in used:
      used.add(value)
      return value
  raise RuntimeError("value space exhausted; use fewer branches")


def _place(rng: random.Random, target: str, others: list[str]) -> list[str]:
  """``others`` with ``target`` inserted at a random position."""
  contexts = list(others)
  contexts.insert(rng.randrange(len(contexts) + 1), target)
  return contexts


# Every family takes (rng, num_branches, difficulty, template); a template changes the wording
# only: the same rng state gives the same draws (and answer) under every template.

# --- find_fact ------------------------------------------------------------------------------
_ATTRIBUTES: dict[str, Callable[[random.Random], str]] = {
  "locker code": lambda rng: str(rng.randint(1000, 9999)),
  "favourite colour": lambda rng: rng.choice(_COLOURS),
  "home city": lambda rng: rng.choice(_CITIES),
  "lucky number": lambda rng: str(rng.randint(10, 99)),
}
# template -> (fact, query)
_FIND_FACT = {
  "train": ("{p}'s {a} is {v}.", "What is {p}'s {a}?"),
  "heldout": ("For {p}, the {a} is {v}.", "Tell me the {a} of {p}."),
}


def _find_fact(rng: random.Random, n: int, difficulty: int, template: str = "train") -> Instance:
  """Difficulty 1: distractors give other attributes of other people; 2: the asked
  attribute of other people; 3: as 2, and every branch adds a second fact (another
  attribute of anyone, the target included)."""
  fact_text, query = _FIND_FACT[template]
  names = rng.sample(_NAMES, n)
  target, people = names[0], names[1:]
  attr = rng.choice(list(_ATTRIBUTES))
  other_attrs = [a for a in _ATTRIBUTES if a != attr]
  used: set[str] = set()

  def fact(person: str, a: str) -> str:
    return fact_text.format(p=person, a=a, v=_distinct(rng, lambda: _ATTRIBUTES[a](rng), used))

  answer = _distinct(rng, lambda: _ATTRIBUTES[attr](rng), used)
  contexts = [fact_text.format(p=target, a=attr, v=answer)]
  contexts += [fact(p, rng.choice(other_attrs) if difficulty == 1 else attr) for p in people]
  if difficulty == 3:  # distinct (person, attribute) pairs, so no fact contradicts another
    pairs = rng.sample([(p, a) for p in names for a in other_attrs], n)
    contexts = [f"{c} {fact(p, a)}" for c, (p, a) in zip(contexts, pairs, strict=True)]
  rng.shuffle(contexts)
  return query.format(p=target, a=attr), answer, contexts


# --- chat_recall ----------------------------------------------------------------------------
_ITEMS: dict[str, Callable[[random.Random], str]] = {
  "parking spot": lambda rng: rng.choice("ABCDEFGH") + str(rng.randint(10, 99)),
  "room number": lambda rng: str(rng.randint(100, 999)),
  "gate": lambda rng: rng.choice("ABCDEFGH") + str(rng.randint(1, 9)),
  "order number": lambda rng: str(rng.randint(10000, 99999)),
  "locker": lambda rng: str(rng.randint(10, 99)),
}
_OWNERS = ("my brother's", "my sister's", "my boss's", "my friend's", "my mother's", "my son's")
# template -> (the round that stores a value, query)
_RECALL = {
  "train": (
    "User: Please remember {owner} {item}: {value}.\nAssistant: Noted, {you} {item} is {value}.",
    "What is my {item}?",
  ),
  "heldout": (
    "User: Keep a note that {owner} {item} is {value}.\nAssistant: Sure, {you} {item} = {value}.",
    "Remind me, what was my {item}?",
  ),
}


def _remember(owner: str, item: str, value: str, template: str = "train") -> str:
  you = "your" if owner == "my" else owner.replace("my ", "your ")
  return _RECALL[template][0].format(owner=owner, item=item, value=value, you=you)


def _chat_recall(rng: random.Random, n: int, difficulty: int, template: str = "train") -> Instance:
  """Difficulty 1: the other rounds are small talk; 2: they also store other items of
  the user; 3: they store the same item for other people (my sister's gate, ...)."""
  item = rng.choice(list(_ITEMS))
  used: set[str] = set()
  answer = _distinct(rng, lambda: _ITEMS[item](rng), used)
  first = _remember("my", item, answer, template)
  talk = [f"User: {q}\nAssistant: {a}" for q, a in rng.sample(_SMALL_TALK, n - 1)]
  if difficulty == 1:
    others = talk
  elif difficulty == 2:
    other_items = rng.sample([x for x in _ITEMS if x != item], min(n - 1, len(_ITEMS) - 1))
    others = [
      _remember("my", x, _distinct(rng, lambda x=x: _ITEMS[x](rng), used), template)
      for x in other_items
    ]
    others += talk[len(others) :]
  else:
    owners = rng.sample(_OWNERS, min(n - 1, len(_OWNERS)))
    others = [
      _remember(o, item, _distinct(rng, lambda: _ITEMS[item](rng), used), template) for o in owners
    ]
    others += talk[len(others) :]
  rng.shuffle(others)
  return _RECALL[template][1].format(item=item), answer, _place(rng, first, others)


# --- tool_lookup ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Tool:
  name: str
  param: str
  choices: list[str]
  field: str
  low: int
  high: int
  questions: dict[str, str]  # template -> question about one argument


_TOOLS = (
  _Tool(
    "get_temperature",
    "city",
    _CITIES,
    "celsius",
    1,
    40,
    {
      "train": "What is the temperature in {} in celsius?",
      "heldout": "How warm is it in {}, in degrees celsius?",
    },
  ),
  _Tool(
    "get_price",
    "item",
    _GOODS,
    "usd",
    2,
    99,
    {"train": "What is the price of {} in dollars?", "heldout": "How many dollars do {} cost?"},
  ),
  _Tool(
    "get_distance",
    "city",
    _CITIES,
    "km",
    100,
    999,
    {"train": "How many km away is {}?", "heldout": "What is the distance to {} in km?"},
  ),
)


def _tool_call(t: _Tool, arg: str, result: list[tuple[str, str]], template: str) -> str:
  if template == "train":
    fields = ", ".join(f'"{k}": {v}' for k, v in result)
    return f'Tool call: {t.name}({{"{t.param}": "{arg}"}})\nResult: {{{fields}}}'
  fields = ", ".join(f"{k} = {v}" for k, v in result)
  return f">>> {t.name}({t.param}='{arg}')\n{fields}"


def _tool_lookup(rng: random.Random, n: int, difficulty: int, template: str = "train") -> Instance:
  """Difficulty 1: the calls use different tools where possible; 2: all calls use the
  asked tool with other arguments; 3: as 2, and each result has a second number."""
  tool = rng.choice(_TOOLS)
  used: set[str] = set()
  args_used: dict[str, set[str]] = {t.name: set() for t in _TOOLS}

  def call(t: _Tool, arg: str | None = None) -> tuple[str, str]:
    arg = arg or _distinct(rng, lambda: rng.choice(t.choices), args_used[t.name])
    value = _distinct(rng, lambda: str(rng.randint(t.low, t.high)), used)
    result = [(t.field, value)]
    if difficulty == 3:
      result.append(("id", _distinct(rng, lambda: str(rng.randint(1000, 9999)), used)))
    return _tool_call(t, arg, result, template), value

  target_arg = _distinct(rng, lambda: rng.choice(tool.choices), args_used[tool.name])
  first, answer = call(tool, target_arg)
  others = []
  for i in range(n - 1):
    if difficulty == 1:
      rest = [t for t in _TOOLS if t is not tool]
      others.append(call(rest[i % len(rest)])[0])
    else:
      others.append(call(tool)[0])
  return tool.questions[template].format(target_arg), answer, _place(rng, first, others)


# --- combine_partials -----------------------------------------------------------------------
# template -> (one part, two parts, query)
_PARTIALS = {
  "train": (
    "Part {i} of the message: {w}.",
    "Parts {i} and {j} of the message: {w}.",
    "Put the parts together in order. What is the full message?",
  ),
  "heldout": (
    "Piece #{i} of the note reads: {w}.",
    "Pieces #{i} and #{j} of the note read: {w}.",
    "Join the pieces in order. What does the whole note say?",
  ),
}


def _combine_partials(
  rng: random.Random, n: int, difficulty: int, template: str = "train"
) -> Instance:
  """Difficulty 1: branch i holds part i, in order; 2: branches are shuffled; 3: shuffled,
  and each branch holds two consecutive parts."""
  one, two, query = _PARTIALS[template]
  per = 2 if difficulty == 3 else 1
  words = rng.sample(_WORDS, n * per)
  contexts = []
  for b in range(n):
    part = " ".join(words[b * per : (b + 1) * per])
    if per == 1:
      contexts.append(one.format(i=b + 1, w=part))
    else:
      contexts.append(two.format(i=2 * b + 1, j=2 * b + 2, w=part))
  if difficulty >= 2:
    rng.shuffle(contexts)
  return query, " ".join(words), contexts


# --- majority_vote --------------------------------------------------------------------------
def _vote_groups(rng: random.Random, n: int, difficulty: int) -> tuple[int, list[int]]:
  """(votes for the winner, sizes of the groups that agree on each wrong answer)."""
  if difficulty == 1:  # absolute majority, every dissenter alone
    m = rng.randint(n // 2 + 1, max(n // 2 + 1, n - 1))
    return m, [1] * (n - m)
  m = rng.randint(2, n // 2 + 1)  # often a plurality short of a majority
  rest, groups = n - m, []
  if difficulty == 3 and rest:  # a runner-up as close as the votes allow (one behind)
    groups.append(min(m - 1, rest))
    rest -= groups[0]
  while rest:
    groups.append(rng.randint(1, min(m - 1, rest)))
    rest -= groups[-1]
  return m, groups


# template -> (worker leads, final line, query)
_VOTE = {
  "train": (
    ("I add {a} and {b} to get {x}.", "{a} + {b} = {x}.", "Adding {b} to {a} gives {x}."),
    " Answer: {x}.",
    "Several workers solved the same task. Which answer did most of them give?",
  ),
  "heldout": (
    ("{a} plus {b} makes {x}.", "Sum of {a} and {b}: {x}.", "{b} + {a} comes to {x}."),
    " Result: {x}.",
    "Each worker computed the same sum. Which result was reported most often?",
  ),
}


def _majority_vote(
  rng: random.Random, n: int, difficulty: int, template: str = "train"
) -> Instance:
  """Workers add two numbers. Difficulty 1: an absolute majority, numbers below 50;
  2: a plurality may be enough, numbers below 100; 3: as 2, the runner-up is one vote
  behind where the count allows, wrong answers are close to the right one, operands have
  three digits."""
  leads, final, query = _VOTE[template]
  lo, hi = {1: (10, 49), 2: (10, 99), 3: (100, 499)}[difficulty]
  a, b = rng.randint(lo, hi), rng.randint(lo, hi)
  answer = a + b
  m, groups = _vote_groups(rng, n, difficulty)
  # Wrong sums stay above both operands, so the answer's number only appears as a result.
  offsets = (
    [1, -1, 2, -2, 3, -3, 10, -10, 20, -20] if difficulty == 3 else [d for d in range(-9, 10) if d]
  )
  wrong = [answer + d for d in rng.sample(offsets, len(groups))]
  votes = [answer] * m + [w for w, g in zip(wrong, groups, strict=True) for _ in range(g)]
  rng.shuffle(votes)
  contexts = [(rng.choice(leads) + final).format(a=a, b=b, x=x) for x in votes]
  return query, str(answer), contexts


# --- verified_candidate ---------------------------------------------------------------------
_PASS = ("Check passed.", "Verified.", "The check is OK.")
_FAIL = ("Check failed.", "Rejected.", "The check is wrong.")
# template -> (candidate line, target suffix (difficulty 3), pass verdicts, fail verdicts,
#              query, query at difficulty 3)
_VERIFY = {
  "train": (
    "Candidate x = {c}. Check: {c} * {k} = {p}",
    ", target {t}.",
    _PASS,
    _FAIL,
    "Which candidate value of x passed the check?",
    "Which candidate value of x meets the target?",
  ),
  "heldout": (
    "Trying x = {c}: {c} times {k} gives {p}",
    "; the goal is {t}.",
    ("Test OK.", "Accepted.", "It works."),
    ("Test failed.", "Refused.", "It does not work."),
    "For which x did the test succeed?",
    "Which x reaches the goal?",
  ),
}


def _verified_candidate(
  rng: random.Random, n: int, difficulty: int, template: str = "train"
) -> Instance:
  """Find x with x * k = target. Difficulty 1: each branch says "Check passed/failed";
  2: the verdict wording varies; 3: no verdict, the branch shows the product and the
  target, and the answer is the candidate whose product equals the target."""
  line_text, target_text, passes, fails, query, query3 = _VERIFY[template]
  while True:
    k = rng.randint(3, 9)
    x = rng.randint(11, 60 if difficulty < 3 else 150)
    cands = rng.sample([c for c in range(max(11, x - 9), x + 10) if c != x], n - 1)
    # Keep the answer's number out of the other branches (a product could equal it).
    if all(c * k != x for c in cands):
      break
  target = x * k
  contexts = []
  for c in [x] + cands:
    line = line_text.format(c=c, k=k, p=c * k)
    if difficulty == 3:
      contexts.append(line + target_text.format(t=target))
    else:
      verdicts = passes if c == x else fails
      contexts.append(f"{line}. {verdicts[0] if difficulty == 1 else rng.choice(verdicts)}")
  rng.shuffle(contexts)
  return query3 if difficulty == 3 else query, str(x), contexts


# --- schedule_lookup (evaluation only) ------------------------------------------------------
_MODES = ("bus", "ferry", "tram")


def _schedule_lookup(
  rng: random.Random, n: int, difficulty: int, template: str = "heldout"
) -> Instance:
  """Departure boards, one per branch; the answer is the departure time (HH:MM) of the
  train to the asked city: a lookup among branches, in a form (timetables, a time-shaped
  answer) that no training family has. Difficulty 1: the other boards list buses, ferries
  and trams to other cities; 2: trains to other cities; 3: as 2, and every board also lists
  an arrival, one of them the train *from* the asked city. All times are distinct."""
  del template  # one phrasing: the family itself is unseen
  cities = rng.sample(_CITIES, n)
  target = cities[0]
  used: set[str] = set()

  def time() -> str:
    return _distinct(rng, lambda: f"{rng.randint(5, 22):02d}:{5 * rng.randint(0, 11):02d}", used)

  def board(mode: str, city: str, at: str) -> str:
    return f"Departures: the {mode} to {city} leaves at {at} from platform {rng.randint(1, 12)}."

  answer = time()
  contexts = [board("train", target, answer)]
  for i, city in enumerate(cities[1:]):
    contexts.append(board(_MODES[i % len(_MODES)] if difficulty == 1 else "train", city, time()))
  if difficulty == 3:
    origins = rng.sample(cities, n)  # one arrival per board; the target city among them
    contexts = [
      f"{c} Arrivals: the train from {o} arrives at {time()}."
      for c, o in zip(contexts, origins, strict=True)
    ]
  rng.shuffle(contexts)
  return f"At what time does the train to {target} leave?", answer, contexts


# --- consensus_vote (evaluation only) -------------------------------------------------------
_VOTE_PHRASES = ("{p} votes for {c}", "{p} would pick {c}", "{p} prefers {c}")


def _consensus_vote(
  rng: random.Random, n: int, difficulty: int, template: str = "heldout"
) -> Instance:
  """People each vote for one trip city, in prose; the answer is the city with the most
  votes: consensus over worker outputs (as majority_vote) with words instead of numbers
  and no "Answer:" lines. Vote counts follow majority_vote's difficulties (1: an absolute
  majority; 2: a plurality; 3: the runner-up one vote behind where possible), and at
  difficulty 3 every voter also names a city they reject ("prefers Oslo over Rome"), so
  counting mentions instead of votes can give a wrong city."""
  del template  # one phrasing: the family itself is unseen
  m, groups = _vote_groups(rng, n, difficulty)
  candidates = rng.sample(_CITIES, 1 + len(groups))
  answer = candidates[0]
  votes = [answer] * m + [c for c, g in zip(candidates[1:], groups, strict=True) for _ in range(g)]
  rng.shuffle(votes)
  contexts = []
  for person, city in zip(rng.sample(_NAMES, n), votes, strict=True):
    text = rng.choice(_VOTE_PHRASES).format(p=person, c=city)
    if difficulty == 3:
      text += f" over {rng.choice([c for c in candidates if c != city])}"
    contexts.append(text + ".")
  return "A group is choosing a city for its trip. Which city got the most votes?", answer, contexts


# --- registry -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  role: str  # "exposure" | "aggregation" | "distillation"
  make: Callable[[random.Random, int, int, str], Instance]  # (rng, n, difficulty, template)
  min_branches: int
  lenient: bool  # single-value answers: score may pick the value out of a sentence
  eval_only: bool = False  # never generated for training (an unseen family)
  # Closed set of word answers (normalised): a lenient score also accepts a sentence that
  # names exactly one member, the answer ("Her favourite colour is red.").
  vocabulary: frozenset[str] = frozenset()


def _vocabulary(*words: Iterable[str]) -> frozenset[str]:
  return frozenset(w.lower() for ws in words for w in ws)


FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    Family("chat_recall", "exposure", _chat_recall, 2, True),
    Family("tool_lookup", "exposure", _tool_lookup, 2, True),
    Family("find_fact", "aggregation", _find_fact, 2, True, False, _vocabulary(_COLOURS, _CITIES)),
    Family("combine_partials", "aggregation", _combine_partials, 2, False),
    Family("majority_vote", "distillation", _majority_vote, 3, True),
    Family("verified_candidate", "distillation", _verified_candidate, 2, True),
  )
}
"""The families that may be trained on (and evaluated on, with held-out templates)."""

UNSEEN_FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    Family("schedule_lookup", "aggregation", _schedule_lookup, 2, True, True),
    Family("consensus_vote", "distillation", _consensus_vote, 3, True, True, _vocabulary(_CITIES)),
  )
}
"""Evaluation-only families: never in any training row."""

ALL_FAMILIES: dict[str, Family] = {**FAMILIES, **UNSEEN_FAMILIES}


def family(name: str) -> Family:
  """The family called ``name``, seen or evaluation-only; ValueError naming the known ones."""
  if name not in ALL_FAMILIES:
    raise ValueError(f"unknown synthetic family {name!r}; known: {sorted(ALL_FAMILIES)}")
  return ALL_FAMILIES[name]


_family = family  # the former private name


def _hash_percent(key: str) -> int:
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def split_of(family: str, query: str, answer: str) -> str:
  """The split that a (family, canonical query, answer) pair belongs to, by a stable hash."""
  return "heldout" if _hash_percent(f"{family}\0{query}\0{answer}") < HELDOUT_PERCENT else "train"


def branch_split(text: str) -> str:
  """The split that a branch text (canonical phrasing) belongs to, by a stable hash of its
  normalised text: held-out branches never occur in training rows."""
  return "heldout" if _hash_percent("branch\0" + normalize(text)) < HELDOUT_PERCENT else "train"


def holds(context: str, answer: str) -> bool:
  """Whether ``context`` contains ``answer`` as whole tokens (after ``normalize``)."""
  gold = normalize(answer)
  return (
    bool(gold) and re.search(rf"(?<!\S){re.escape(gold)}(?!\S)", normalize(context)) is not None
  )


def answer_branches(answer: str, contexts: Iterable[str]) -> list[str]:
  """The contexts that hold the answer (``holds``), in order."""
  return [c for c in contexts if holds(c, answer)]


def instance_split(family: str, query: str, answer: str, contexts: Iterable[str]) -> str | None:
  """The split of a canonical instance, or None if it belongs to neither (drawn again).

  "heldout": the pair is held out and the first answer branch (if any) is a held-out branch.
  "train": the pair is a training pair and none of its branches is a held-out branch.
  """
  contexts = list(contexts)
  if split_of(family, query, answer) == "heldout":
    holders = answer_branches(answer, contexts)
    return "heldout" if not holders or branch_split(holders[0]) == "heldout" else None
  return "train" if all(branch_split(c) == "train" for c in contexts) else None


def _draw(
  fam: Family, rng: random.Random, n: int, difficulty: int, template: str
) -> tuple[Instance, Instance]:
  """(the instance in ``template``, the same draws in the canonical "train" phrasing)."""
  if fam.eval_only or template == "train":
    inst = fam.make(rng, n, difficulty, template)
    return inst, inst
  state = rng.getstate()
  inst = fam.make(rng, n, difficulty, template)
  end = rng.getstate()
  rng.setstate(state)
  canon = fam.make(rng, n, difficulty, "train")
  if rng.getstate() != end or canon[1] != inst[1] or len(canon[2]) != len(inst[2]):
    raise AssertionError(f"{fam.name}: template {template!r} changed the random draws")
  return inst, canon


def generate(
  family: str,
  split: str,
  num_examples: int,
  seed: int,
  num_branches: int | tuple[int, int] = 3,
  difficulty: int = 1,
  template: str | None = None,
) -> list[Row]:
  """``num_examples`` distinct rows of ``family`` from ``split``, deterministic in all arguments.

  ``num_branches`` is a count, or an inclusive (low, high) range drawn per row (the
  mapper's features include the number of branches, so training should vary it).
  ``template`` is the phrasing of a seen family: by default the split's own ("train" for
  training, "heldout" for held-out rows); training rows only ever use "train". Families of
  ``UNSEEN_FAMILIES`` are held-out only (with one phrasing; ``template`` is ignored). Rows
  carry ``meta`` keys family, role, difficulty, split, template, generalization
  ("in_distribution" | "new_template" | "unseen_family") and, for a held-out template,
  canonical_query (the query in the training phrasing, whose pair decides the split).
  """
  fam = _family(family)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
  if fam.eval_only and split != "heldout":
    raise ValueError(
      f"{family} is an evaluation-only (unseen) family: generate it for split='heldout' only"
    )
  template = template or split
  if template not in TEMPLATES:
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
  if split == "train" and template != "train":
    raise ValueError(f"template={template!r}: training rows use the 'train' phrasing only")
  lo, hi = (num_branches, num_branches) if isinstance(num_branches, int) else num_branches
  if not fam.min_branches <= lo <= hi <= MAX_BRANCHES:
    raise ValueError(
      f"num_branches={num_branches!r} must lie in [{fam.min_branches}, {MAX_BRANCHES}] for {family}"
    )
  if fam.eval_only:
    generalization, template = "unseen_family", "heldout"
  else:
    generalization = "new_template" if template != "train" else "in_distribution"
  rng = random.Random(f"{family}/{split}/{seed}")
  rows: list[Row] = []
  seen: set[tuple] = set()
  max_draws = 10_000 + 1_000 * num_examples
  draws = 0
  while len(rows) < num_examples:
    if draws == max_draws:
      raise RuntimeError(
        f"{family}/{split}: only {len(rows)} distinct rows in {max_draws} draws (asked for "
        f"{num_examples}); the value space is too small for this many rows"
      )
    draws += 1
    n = rng.randint(lo, hi)
    (query, answer, contexts), canon = _draw(fam, rng, n, difficulty, template)
    # Evaluation-only families never train, so every instance is held out.
    if not fam.eval_only and instance_split(family, *canon) != split:
      continue  # rejection keeps the splits leak-free (see the module docstring)
    key = (query, answer, tuple(contexts))
    if key in seen:
      continue
    seen.add(key)
    meta = {
      "family": family,
      "role": fam.role,
      "difficulty": difficulty,
      "split": split,
      "template": template,
      "generalization": generalization,
    }
    if canon[0] != query:
      meta["canonical_query"] = canon[0]
    rows.append(
      Row(
        query=query,
        answer=answer,
        contexts=tuple(contexts),
        source=f"synthetic/{family}",
        meta=meta,
      )
    )
  return rows


def check_no_leak(train_rows: Iterable[Row], heldout_rows: Iterable[Row]) -> dict:
  """What of the held-out rows occurs in the training rows, compared after ``normalize``.

  Returns {ok, heldout_rows, unique_heldout_pairs, pairs_in_train (held-out rows whose
  (query, answer) pair is a training pair), answer_branches (held-out branches holding their
  row's answer), answer_branches_in_train (of those, the ones that are the text of any
  training branch), rows_with_leaked_answer_branch, duplicate_rows {train, heldout} (rows
  repeated within a list), by_family {family: the same counts and unique_pairs}, examples (up
  to 10 leaks)}. Families are told apart by ``meta["family"]``, else by ``source``.
  ``ok`` is True when no pair and no answer branch leaks.
  """
  train_rows, heldout_rows = list(train_rows), list(heldout_rows)

  def pair(r: Row) -> tuple[str, str]:
    return normalize(r.query), normalize(r.answer)

  def dups(rows: list[Row]) -> int:
    return len(rows) - len({(r.query, r.answer, tuple(r.contexts)) for r in rows})

  train_pairs = {pair(r) for r in train_rows}
  train_branches = {normalize(c) for r in train_rows for c in r.contexts}
  keys = ("rows", "pairs_in_train", "answer_branches", "answer_branches_in_train")
  by_family: dict[str, dict[str, int]] = collections.defaultdict(lambda: dict.fromkeys(keys, 0))
  by_family_leaky_rows: collections.Counter = collections.Counter()
  examples = []
  for r in heldout_rows:
    counts = by_family[r.meta.get("family", r.source)]
    counts["rows"] += 1
    if pair(r) in train_pairs:
      counts["pairs_in_train"] += 1
      examples.append({"kind": "pair", "query": r.query, "answer": r.answer})
    leaked = False
    for c in answer_branches(r.answer, r.contexts):
      counts["answer_branches"] += 1
      if normalize(c) in train_branches:
        counts["answer_branches_in_train"] += 1
        leaked = True
        examples.append({"kind": "answer_branch", "query": r.query, "branch": c})
    by_family_leaky_rows[r.meta.get("family", r.source)] += leaked
  for name, counts in by_family.items():
    counts["rows_with_leaked_answer_branch"] = by_family_leaky_rows[name]
    counts["unique_pairs"] = len(
      {pair(r) for r in heldout_rows if r.meta.get("family", r.source) == name}
    )
  total = {k: sum(c[k] for c in by_family.values()) for k in keys}
  return {
    "ok": total["pairs_in_train"] == 0 and total["answer_branches_in_train"] == 0,
    "heldout_rows": len(heldout_rows),
    "unique_heldout_pairs": len({pair(r) for r in heldout_rows}),
    "pairs_in_train": total["pairs_in_train"],
    "answer_branches": total["answer_branches"],
    "answer_branches_in_train": total["answer_branches_in_train"],
    "rows_with_leaked_answer_branch": sum(by_family_leaky_rows.values()),
    "duplicate_rows": {"train": dups(train_rows), "heldout": dups(heldout_rows)},
    "by_family": {k: dict(v) for k, v in sorted(by_family.items())},
    "examples": examples[:10],
  }


# --- scoring --------------------------------------------------------------------------------
_BOXED = re.compile(r"\\boxed?\{([^{}]*)\}")
# "answer is", "answer is:", "answer:", "answer =", with markdown emphasis around the marker
# ("**Answer:** 42", "**Answer**: 42"); "answers", "answered" and "answer to ..." are no marker.
_MARKER = re.compile(r"answer[*_]*\s*(?:is\b[*_]*\s*:?|:|=)", re.IGNORECASE)
_TIME = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?![\d:])")


def normalize(text: str) -> str:
  """Lowercase, punctuation to spaces, whitespace collapsed: "B12." -> "b12"."""
  return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def extract_answer(prediction: str) -> str:
  """The answer part of a prediction.

  1. The last ``\\boxed{...}`` (or ``\\box{...}``).
  2. Else the last answer marker ("answer is", "answer:", "answer =", markdown allowed) that
     is followed by something: the rest of its line, or, when the marker ends its line, the
     next non-empty line ("The answer is:\\nYour gate is B7."). A marker with nothing after
     it, such as a trailing "Answer:" line that a model starts and never finishes, is skipped
     ("Your locker is 73.\\n\\nAnswer:" -> "Your locker is 73.").
  3. Else the first non-empty line.
  """
  boxed = _BOXED.findall(prediction)
  if boxed:
    return boxed[-1]
  for marker in reversed(list(_MARKER.finditer(prediction))):
    line, _, after = prediction[marker.end() :].partition("\n")
    if normalize(line):
      return line
    following = [x for x in after.splitlines() if normalize(x)]
    if following:
      return following[0]
  lines = [line for line in prediction.splitlines() if normalize(line)]
  return lines[0] if lines else ""


def _times(text: str) -> set[tuple[int, int]]:
  return {(int(h), int(m)) for h, m in _TIME.findall(text)}


def _lenient_match(fam: Family, raw: str, answer: str) -> bool:
  """Whether ``raw`` (an extracted answer part) names the answer and no other value. Values
  are times (HH:MM) for a time answer; else tokens with a digit (numbers, codes such as "b12")
  and words of the family's closed vocabulary (colours, cities)."""
  gold, part = normalize(answer), normalize(raw)
  if _TIME.fullmatch(answer.strip()):
    return _times(raw) == _times(answer)
  if not (re.fullmatch(r"[a-z]*\d+", gold) or gold in fam.vocabulary):
    return False
  values = {t for t in part.split() if t in fam.vocabulary or re.search(r"\d", t)}
  return values == {gold}


def score(family: str, prediction: str, answer: str) -> float:
  """1.0 if ``prediction`` gives ``answer``, else 0.0 (exact match after ``normalize``).

  The prediction is compared whole, then its ``extract_answer`` part. For families with a
  single-value answer (all but combine_partials) the answer also counts when it is the only
  value in the extracted part: a number or code ("42", "b12"), a word of a closed answer set
  (find_fact's colours and cities, consensus_vote's cities; any token with a digit or of that
  set is a value), or a time (times only; as hours and minutes: "9:05" = "09:05"). So "Most
  workers said 42." and "Her favourite colour is red." score 1 but "42 or 43", "42 or Rome"
  and "red, not blue" score 0. Other word answers and the multi-word combine_partials answer
  need an exact (extracted) match.
  """
  fam = _family(family)
  gold = normalize(answer)
  if normalize(prediction) == gold:
    return 1.0
  raw = extract_answer(prediction)
  if normalize(raw) == gold:
    return 1.0
  if fam.lenient and _lenient_match(fam, raw, answer):
    return 1.0
  return 0.0
