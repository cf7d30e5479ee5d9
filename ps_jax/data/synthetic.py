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

Splits: an instance belongs to "train" or "heldout" by a hash of (family, query, answer),
so a held-out question/answer pair never occurs in train, even with other branches.
``generate`` draws instances from a generator seeded by (family, split, seed) and keeps
those of the requested split, so output is deterministic by seed.

Difficulty is 1, 2 or 3; each family documents what it changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable

from ps_jax.data.rows import Row

SPLITS = ("train", "heldout")
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


# --- find_fact ------------------------------------------------------------------------------
_ATTRIBUTES: dict[str, Callable[[random.Random], str]] = {
  "locker code": lambda rng: str(rng.randint(1000, 9999)),
  "favourite colour": lambda rng: rng.choice(_COLOURS),
  "home city": lambda rng: rng.choice(_CITIES),
  "lucky number": lambda rng: str(rng.randint(10, 99)),
}


def _find_fact(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Difficulty 1: distractors give other attributes of other people; 2: the asked
  attribute of other people; 3: as 2, and every branch adds a second fact (another
  attribute of anyone, the target included)."""
  names = rng.sample(_NAMES, n)
  target, people = names[0], names[1:]
  attr = rng.choice(list(_ATTRIBUTES))
  other_attrs = [a for a in _ATTRIBUTES if a != attr]
  used: set[str] = set()

  def fact(person: str, a: str) -> str:
    return f"{person}'s {a} is {_distinct(rng, lambda: _ATTRIBUTES[a](rng), used)}."

  answer = _distinct(rng, lambda: _ATTRIBUTES[attr](rng), used)
  contexts = [f"{target}'s {attr} is {answer}."]
  contexts += [fact(p, rng.choice(other_attrs) if difficulty == 1 else attr) for p in people]
  if difficulty == 3:  # distinct (person, attribute) pairs, so no fact contradicts another
    pairs = rng.sample([(p, a) for p in names for a in other_attrs], n)
    contexts = [f"{c} {fact(p, a)}" for c, (p, a) in zip(contexts, pairs, strict=True)]
  rng.shuffle(contexts)
  return f"What is {target}'s {attr}?", answer, contexts


# --- chat_recall ----------------------------------------------------------------------------
_ITEMS: dict[str, Callable[[random.Random], str]] = {
  "parking spot": lambda rng: rng.choice("ABCDEFGH") + str(rng.randint(10, 99)),
  "room number": lambda rng: str(rng.randint(100, 999)),
  "gate": lambda rng: rng.choice("ABCDEFGH") + str(rng.randint(1, 9)),
  "order number": lambda rng: str(rng.randint(10000, 99999)),
  "locker": lambda rng: str(rng.randint(10, 99)),
}
_OWNERS = ("my brother's", "my sister's", "my boss's", "my friend's", "my mother's", "my son's")


def _remember(owner: str, item: str, value: str) -> str:
  you = "your" if owner == "my" else owner.replace("my ", "your ")
  return (
    f"User: Please remember {owner} {item}: {value}.\nAssistant: Noted, {you} {item} is {value}."
  )


def _chat_recall(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Difficulty 1: the other rounds are small talk; 2: they also store other items of
  the user; 3: they store the same item for other people (my sister's gate, ...)."""
  item = rng.choice(list(_ITEMS))
  used: set[str] = set()
  answer = _distinct(rng, lambda: _ITEMS[item](rng), used)
  first = _remember("my", item, answer)
  talk = [f"User: {q}\nAssistant: {a}" for q, a in rng.sample(_SMALL_TALK, n - 1)]
  if difficulty == 1:
    others = talk
  elif difficulty == 2:
    other_items = rng.sample([x for x in _ITEMS if x != item], min(n - 1, len(_ITEMS) - 1))
    others = [
      _remember("my", x, _distinct(rng, lambda x=x: _ITEMS[x](rng), used)) for x in other_items
    ]
    others += talk[len(others) :]
  else:
    owners = rng.sample(_OWNERS, min(n - 1, len(_OWNERS)))
    others = [_remember(o, item, _distinct(rng, lambda: _ITEMS[item](rng), used)) for o in owners]
    others += talk[len(others) :]
  rng.shuffle(others)
  return f"What is my {item}?", answer, _place(rng, first, others)


# --- tool_lookup ----------------------------------------------------------------------------
# (tool, argument name, argument values, result field, value range, question template)
_TOOLS = (
  (
    "get_temperature",
    "city",
    _CITIES,
    "celsius",
    (1, 40),
    "What is the temperature in {} in celsius?",
  ),
  ("get_price", "item", _GOODS, "usd", (2, 99), "What is the price of {} in dollars?"),
  ("get_distance", "city", _CITIES, "km", (100, 999), "How many km away is {}?"),
)


def _tool_lookup(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Difficulty 1: the calls use different tools where possible; 2: all calls use the
  asked tool with other arguments; 3: as 2, and each result has a second number."""
  tool = rng.choice(_TOOLS)
  used: set[str] = set()
  args_used: dict[str, set[str]] = {t[0]: set() for t in _TOOLS}

  def call(t: tuple, arg: str | None = None) -> tuple[str, str]:
    name, param, choices, field, (lo, hi), _ = t
    arg = arg or _distinct(rng, lambda: rng.choice(choices), args_used[name])
    value = _distinct(rng, lambda: str(rng.randint(lo, hi)), used)
    result = f'{{"{field}": {value}'
    if difficulty == 3:
      result += f', "id": {_distinct(rng, lambda: str(rng.randint(1000, 9999)), used)}'
    return f'Tool call: {name}({{"{param}": "{arg}"}})\nResult: {result}}}', value

  target_arg = _distinct(rng, lambda: rng.choice(tool[2]), args_used[tool[0]])
  first, answer = call(tool, target_arg)
  others = []
  for i in range(n - 1):
    if difficulty == 1:
      rest = [t for t in _TOOLS if t is not tool]
      others.append(call(rest[i % len(rest)])[0])
    else:
      others.append(call(tool)[0])
  return tool[5].format(target_arg), answer, _place(rng, first, others)


# --- combine_partials -----------------------------------------------------------------------
def _combine_partials(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Difficulty 1: branch i holds part i, in order; 2: branches are shuffled; 3: shuffled,
  and each branch holds two consecutive parts."""
  per = 2 if difficulty == 3 else 1
  words = rng.sample(_WORDS, n * per)
  contexts = []
  for b in range(n):
    part = words[b * per : (b + 1) * per]
    if per == 1:
      contexts.append(f"Part {b + 1} of the message: {part[0]}.")
    else:
      contexts.append(f"Parts {2 * b + 1} and {2 * b + 2} of the message: {part[0]} {part[1]}.")
  if difficulty >= 2:
    rng.shuffle(contexts)
  return "Put the parts together in order. What is the full message?", " ".join(words), contexts


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


def _majority_vote(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Workers add two numbers. Difficulty 1: an absolute majority, numbers below 50;
  2: a plurality may be enough, numbers below 100; 3: as 2, the runner-up is one vote
  behind where the count allows, wrong answers are close to the right one, operands have
  three digits."""
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
  leads = ("I add {a} and {b} to get {x}.", "{a} + {b} = {x}.", "Adding {b} to {a} gives {x}.")
  contexts = [rng.choice(leads).format(a=a, b=b, x=x) + f" Answer: {x}." for x in votes]
  return (
    "Several workers solved the same task. Which answer did most of them give?",
    str(answer),
    contexts,
  )


# --- verified_candidate ---------------------------------------------------------------------
_PASS = ("Check passed.", "Verified.", "The check is OK.")
_FAIL = ("Check failed.", "Rejected.", "The check is wrong.")


def _verified_candidate(rng: random.Random, n: int, difficulty: int) -> Instance:
  """Find x with x * k = target. Difficulty 1: each branch says "Check passed/failed";
  2: the verdict wording varies; 3: no verdict, the branch shows the product and the
  target, and the answer is the candidate whose product equals the target."""
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
    line = f"Candidate x = {c}. Check: {c} * {k} = {c * k}"
    if difficulty == 3:
      contexts.append(f"{line}, target {target}.")
    else:
      verdicts = _PASS if c == x else _FAIL
      contexts.append(f"{line}. {verdicts[0] if difficulty == 1 else rng.choice(verdicts)}")
  rng.shuffle(contexts)
  question = "meets the target" if difficulty == 3 else "passed the check"
  return f"Which candidate value of x {question}?", str(x), contexts


# --- registry -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  role: str  # "exposure" | "aggregation" | "distillation"
  make: Callable[[random.Random, int, int], Instance]
  min_branches: int
  lenient: bool  # single-value answers: score may pick the value out of a sentence


FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    Family("chat_recall", "exposure", _chat_recall, 2, True),
    Family("tool_lookup", "exposure", _tool_lookup, 2, True),
    Family("find_fact", "aggregation", _find_fact, 2, True),
    Family("combine_partials", "aggregation", _combine_partials, 2, False),
    Family("majority_vote", "distillation", _majority_vote, 3, True),
    Family("verified_candidate", "distillation", _verified_candidate, 2, True),
  )
}


def _family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown synthetic family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def split_of(family: str, query: str, answer: str) -> str:
  """The split that a (family, query, answer) instance belongs to, by a stable hash."""
  digest = hashlib.sha256(f"{family}\0{query}\0{answer}".encode()).digest()
  return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT else "train"


def generate(
  family: str,
  split: str,
  num_examples: int,
  seed: int,
  num_branches: int | tuple[int, int] = 3,
  difficulty: int = 1,
) -> list[Row]:
  """``num_examples`` rows of ``family`` from ``split``, deterministic in all arguments.

  ``num_branches`` is a count, or an inclusive (low, high) range drawn per row (the
  mapper's features include the number of branches, so training should vary it).
  """
  fam = _family(family)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
  lo, hi = (num_branches, num_branches) if isinstance(num_branches, int) else num_branches
  if not fam.min_branches <= lo <= hi <= MAX_BRANCHES:
    raise ValueError(
      f"num_branches={num_branches!r} must lie in [{fam.min_branches}, {MAX_BRANCHES}] for {family}"
    )
  rng = random.Random(f"{family}/{split}/{seed}")
  rows = []
  while len(rows) < num_examples:
    n = rng.randint(lo, hi)
    query, answer, contexts = fam.make(rng, n, difficulty)
    if split_of(family, query, answer) != split:
      continue  # rejection keeps the splits disjoint; costs ~1.25x draws for train
    rows.append(
      Row(
        query=query,
        answer=answer,
        contexts=tuple(contexts),
        source=f"synthetic/{family}",
        meta={"family": family, "role": fam.role, "difficulty": difficulty, "split": split},
      )
    )
  return rows


# --- scoring --------------------------------------------------------------------------------
_BOXED = re.compile(r"\\boxed?\{([^{}]*)\}")
_MARKER = re.compile(r"answer\s*(?:is\b|:|=)\s*([^\n]*)", re.IGNORECASE)


def normalize(text: str) -> str:
  """Lowercase, punctuation to spaces, whitespace collapsed: "B12." -> "b12"."""
  return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def extract_answer(prediction: str) -> str:
  """The answer part of a prediction: the last ``\\boxed{...}`` (or ``\\box{...}``), else the
  text after the last "answer is" / "answer:" up to the line end, else the first line."""
  boxed = _BOXED.findall(prediction)
  if boxed:
    return boxed[-1]
  marked = _MARKER.findall(prediction)
  if marked:
    return marked[-1]
  lines = [line for line in prediction.splitlines() if line.strip()]
  return lines[0] if lines else ""


def score(family: str, prediction: str, answer: str) -> float:
  """1.0 if ``prediction`` gives ``answer``, else 0.0 (exact match after ``normalize``).

  The prediction is compared whole, then its ``extract_answer`` part. For families with a
  single-value answer (all but combine_partials) a number or code answer ("42", "b12")
  also counts when it is the only token of that shape in the extracted part, so "Most
  workers said 42." scores 1 but "42 or 43" scores 0. Word answers ("red") and the
  multi-word combine_partials answer need an exact (extracted) match.
  """
  fam = _family(family)
  gold = normalize(answer)
  if normalize(prediction) == gold:
    return 1.0
  part = normalize(extract_answer(prediction))
  if part == gold:
    return 1.0
  if fam.lenient:
    shape = r"\d+" if gold.isdigit() else r"[a-z]+\d+" if re.fullmatch(r"[a-z]+\d+", gold) else None
    if shape:
      found = {t for t in part.split() if re.fullmatch(shape, t)}
      if found == {gold}:
        return 1.0
  return 0.0
