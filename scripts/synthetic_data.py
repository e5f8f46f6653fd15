"""Seeded generator of verifiable reasoning problems with worked, step-by-step solutions.

Every item is a dict with the project's item fields (``docs/DESIGN.md``)::

    {"id", "section", "category", "difficulty", "prompt", "reasoning", "answer"}

Categories (section in brackets):

- ``arithmetic`` [math]: word problems of 1-4 steps (running totals, shopping, rates).
- ``unit_conversion`` [math]: metric/imperial/time conversions, compound units, mixed sums.
- ``date_time`` [math]: add days to a date, days between dates, weekdays, clock arithmetic
  (all computed with :mod:`datetime`, so facts such as leap years are real).
- ``sequence`` [logic]: next term of arithmetic, geometric, quadratic, Fibonacci-like,
  interleaved and ``a*x+b`` sequences.
- ``ordering`` [logic]: "A is taller than B ..." puzzles with exactly one consistent order.
- ``knights_knaves`` [logic]: truth-teller/liar puzzles with exactly one consistent solution.

Answers are canonical strings: integers without ``.0``, exact decimals without trailing zeros,
ISO dates (``2024-03-05``), 24-hour times (``07:05``), weekday names, person names.
Arithmetic inside the reasoning is written as ``a op b = c`` in ASCII so that it can be
re-checked mechanically (``tests/unit/test_data_synthetic.py`` does so).

Generation is a pure function of ``(n, seed, categories)``: each item has its own
``random.Random`` seeded with a string (string seeds hash with SHA-512, independent of
``PYTHONHASHSEED``), so items do not depend on the Python process or on each other.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import random
import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

SECTIONS: dict[str, str] = {
    "arithmetic": "math",
    "unit_conversion": "math",
    "date_time": "math",
    "sequence": "logic",
    "ordering": "logic",
    "knights_knaves": "logic",
}
CATEGORIES: tuple[str, ...] = tuple(SECTIONS)
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

# Retries per item slot when a candidate repeats an earlier prompt (or an excluded one).
_MAX_ATTEMPTS = 500

_NAMES_F = ("Alice", "Bella", "Chloe", "Dana", "Emma", "Fiona", "Grace", "Hana", "Ines", "Julia",
            "Kira", "Lena", "Maria", "Nora", "Olga", "Priya", "Rosa", "Sara", "Tara", "Uma",
            "Vera", "Wendy", "Yara", "Zoe")
_NAMES_M = ("Adam", "Ben", "Carlos", "David", "Ethan", "Farid", "George", "Hugo", "Ivan", "Jack",
            "Kenji", "Leo", "Marco", "Nikhil", "Omar", "Pablo", "Quinn", "Raj", "Sam", "Tom",
            "Umar", "Victor", "Will", "Yusuf")
_NAMES = _NAMES_F + _NAMES_M


def normalize_prompt(prompt: str) -> str:
    """Lower-case, keep letters/digits only, single spaces: the key for duplicate checks."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", prompt.lower()).split())


def canonical_number(value: int | Fraction) -> str:
    """Exact decimal text of ``value`` (``12``, ``2.5``, ``-0.125``); no ``.0``, no exponent.

    Raises ValueError for values without a finite decimal expansion (e.g. 1/3): the generator
    only produces problems whose answers terminate.
    """
    value = Fraction(value)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        raise ValueError(f"{value} has no finite decimal expansion")
    places = max(twos, fives)
    scaled = abs(value.numerator) * (10**places // value.denominator)
    sign = "-" if value < 0 else ""
    if places == 0:
        return f"{sign}{scaled}"
    digits = str(scaled).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"{sign}{text}"


_num = canonical_number


def _person(rng: random.Random) -> tuple[str, str, str]:
    """A name with its subject and possessive pronouns."""
    if rng.random() < 0.5:
        return rng.choice(_NAMES_F), "she", "her"
    return rng.choice(_NAMES_M), "he", "his"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------- arithmetic

_COUNTABLES = ("apples", "marbles", "stickers", "books", "cookies", "coins", "pencils", "stamps",
               "shells", "cards", "beads", "toy cars", "oranges", "eggs", "balloons")
_CONTAINERS = ("boxes", "bags", "packs", "jars")
_SHOP_ITEMS = (("notebook", "notebooks", 2, 9), ("pen", "pens", 1, 4),
               ("sandwich", "sandwiches", 3, 8), ("juice", "juices", 1, 5),
               ("ticket", "tickets", 5, 15), ("T-shirt", "T-shirts", 6, 20),
               ("book", "books", 4, 18), ("plant", "plants", 3, 12),
               ("mug", "mugs", 2, 10), ("ball", "balls", 3, 11))
_RATE_THINGS = (("machine", "toys"), ("printer", "pages"), ("bakery", "loaves"),
                ("factory line", "bottles"), ("team", "kites"), ("robot", "parts"))


def _arith_story(rng: random.Random, steps: int, difficulty: str) -> tuple[str, str, str]:
    name, she, _her = _person(rng)
    things = rng.choice(_COUNTABLES)
    top = {"easy": 20, "medium": 60, "hard": 120}[difficulty]
    value = rng.randint(2, top)
    ops = {"easy": ["add", "sub"], "medium": ["add", "sub", "groups"],
           "hard": ["add", "sub", "groups", "mul"]}[difficulty]
    sentences = [f"{name} has {value} {things}."]
    lines = [f"{name} starts with {value} {things}."]
    question = f"How many {things} does {name} have now?"
    for step in range(steps):
        last = step == steps - 1
        divisors = [k for k in range(2, 9) if value % k == 0 and value // k >= 1]
        if difficulty == "hard" and last and divisors and rng.random() < 0.5:
            k = rng.choice(divisors)
            sentences.append(f"Then {she} shares all of them equally among {k} friends.")
            question = f"How many {things} does each friend get?"
            lines.append(f"Each friend gets {value} / {k} = {value // k} {things}.")
            value //= k
            continue
        op = rng.choice(ops)
        if op == "sub" and value < 2:
            op = "add"
        if op == "mul" and value > 200:
            op = "sub"
        if op == "add":
            b = rng.randint(1, top)
            verb = rng.choice(["buys", "finds", "gets", "is given"])
            sentences.append(f"Then {she} {verb} {b} more.")
            lines.append(f"{_cap(she)} {verb} {b} more: {value} + {b} = {value + b}.")
            value += b
        elif op == "sub":
            b = rng.randint(1, value - 1)
            verb = rng.choice(["gives away", "loses", "sells", "uses"])
            sentences.append(f"Then {she} {verb} {b} of them.")
            lines.append(f"{_cap(she)} {verb} {b}: {value} - {b} = {value - b}.")
            value -= b
        elif op == "groups":
            k, m = rng.randint(2, 6), rng.randint(2, 12)
            box = rng.choice(_CONTAINERS)
            sentences.append(f"Then {she} buys {k} {box} with {m} {things} in each.")
            lines.append(f"The {box} hold {k} * {m} = {k * m}, so {value} + {k * m} = "
                         f"{value + k * m}.")
            value += k * m
        else:  # mul
            k = rng.choice([2, 3])
            word = {2: "doubles", 3: "triples"}[k]
            sentences.append(f"Then the number of {things} {she} has {word}.")
            lines.append(f"It {word}: {value} * {k} = {value * k}.")
            value *= k
    return " ".join(sentences) + " " + question, "\n".join(lines), _num(value)


def _arith_shopping(rng: random.Random, steps: int, difficulty: str) -> tuple[str, str, str]:
    name, she, _her = _person(rng)
    # steps = item kinds + (1 for the total if > 1 kind) + (1 for change) + (1 for coupon).
    kinds = {1: 1, 2: 1, 3: 2, 4: rng.choice([2, 3])}[steps]
    picked = rng.sample(_SHOP_ITEMS, kinds)
    parts, lines, costs = [], [], []
    for singular, plural, lo, hi in picked:
        price, qty = rng.randint(lo, hi), rng.randint(2, 9)
        parts.append((singular, plural, price, qty))
        costs.append(price * qty)
        lines.append(f"{qty} {plural} cost {qty} * {price} = {price * qty} dollars.")
    prices = " and ".join(f"a {s} costs ${p}" for s, _pl, p, _q in parts)
    buys = " and ".join(f"{q} {pl}" for _s, pl, _p, q in parts)
    total = sum(costs)
    if kinds > 1:
        lines.append(f"Total: {' + '.join(str(c) for c in costs)} = {total} dollars.")
    used = kinds + (1 if kinds > 1 else 0)
    text = f"At a shop {prices}. {name} buys {buys}."
    if difficulty == "hard" and used < steps and total > 10 and rng.random() < 0.5:
        coupon = rng.randint(2, min(10, total - 1))
        text += f" {_cap(she)} uses a coupon for ${coupon} off the total."
        lines.append(f"With the coupon: {total} - {coupon} = {total - coupon} dollars.")
        total -= coupon
        used += 1
    if used < steps:
        bill = next(b for b in (5, 10, 20, 50, 100, 200, 500) if b >= total)
        if bill == total:
            bill = {5: 10, 10: 20, 20: 50, 50: 100, 100: 200, 200: 500, 500: 1000}[bill]
        text += f" {_cap(she)} pays with a ${bill} bill. How many dollars of change does {she} get?"
        lines.append(f"Change: {bill} - {total} = {bill - total} dollars.")
        return text, "\n".join(lines), _num(bill - total)
    text += f" How many dollars does {she} spend?"
    return text, "\n".join(lines), _num(total)


def _arith_rate(rng: random.Random, steps: int, difficulty: str) -> tuple[str, str, str]:
    maker, things = rng.choice(_RATE_THINGS)
    rate = rng.randint(3, {"easy": 12, "medium": 25, "hard": 40}[difficulty])
    h1 = rng.randint(2, 9)
    text = f"A {maker} makes {rate} {things} per hour."
    lines = []
    if steps >= 2:
        h2 = rng.randint(2, 9)
        hours = h1 + h2
        text += f" It works {h1} hours on Monday and {h2} hours on Tuesday."
        lines.append(f"Hours worked: {h1} + {h2} = {hours}.")
    else:
        hours = h1
        text += f" It works for {h1} hours."
    total = rate * hours
    lines.append(f"{_cap(things)} made: {rate} * {hours} = {total}.")
    if steps <= 2:
        return text + f" How many {things} does it make?", "\n".join(lines), _num(total)
    box = rng.choice([4, 5, 6, 8, 10])
    rejects = total % box + box * rng.randint(0 if total % box else 1, 2)
    if rejects >= total:
        rejects = total % box if total % box else box
    good = total - rejects
    text += f" {rejects} of the {things} are faulty and thrown away."
    lines.append(f"Good {things}: {total} - {rejects} = {good}.")
    if steps == 3 or good == 0:
        return text + f" How many good {things} are left?", "\n".join(lines), _num(good)
    text += f" The good ones are packed {box} per box. How many full boxes are there?"
    lines.append(f"Boxes: {good} / {box} = {good // box}.")
    return text, "\n".join(lines), _num(good // box)


def _gen_arithmetic(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    steps = rng.choice({"easy": [1, 2], "medium": [2, 3], "hard": [3, 4]}[difficulty])
    kind = rng.choice([_arith_story, _arith_shopping, _arith_rate])
    return kind(rng, steps, difficulty)


# ---------------------------------------------------------------------------- unit conversion

# Unit names (singular, plural) by code; _BASIC: value_in_small = value_in_big * factor.
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "t": ("tonne", "tonnes"),
    "L": ("liter", "liters"), "mL": ("milliliter", "milliliters"),
    "h": ("hour", "hours"), "min": ("minute", "minutes"), "s": ("second", "seconds"),
    "day": ("day", "days"), "week": ("week", "weeks"),
    "ft": ("foot", "feet"), "in": ("inch", "inches"), "yd": ("yard", "yards"),
    "mi": ("mile", "miles"), "lb": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "gal": ("gallon", "gallons"), "qt": ("quart", "quarts"),
}
_BASIC = {  # one-hop facts "1 <big> = <n> <small>"
    ("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("kg", "g"): 1000, ("L", "mL"): 1000,
    ("h", "min"): 60, ("min", "s"): 60, ("day", "h"): 24, ("week", "day"): 7, ("ft", "in"): 12,
    ("yd", "ft"): 3, ("lb", "oz"): 16, ("gal", "qt"): 4, ("t", "kg"): 1000, ("mi", "ft"): 5280,
}
_TWO_HOP = (("h", "min", "s"), ("km", "m", "cm"), ("day", "h", "min"), ("yd", "ft", "in"),
            ("week", "day", "h"), ("m", "cm", "mm"), ("t", "kg", "g"))
_MIXED = (("ft", "in"), ("h", "min"), ("kg", "g"), ("km", "m"), ("m", "cm"), ("lb", "oz"),
          ("yd", "ft"), ("L", "mL"))


def _unit(code: str, value: int | Fraction) -> str:
    singular, plural = _UNITS[code]
    return f"{_num(value)} {singular if value == 1 else plural}"


def _nice_multiple(rng: random.Random, factor: Fraction, lo: int, hi: int) -> int:
    """An integer in [lo, hi] whose product with ``factor`` has a finite decimal expansion."""
    den = factor.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    step = den * rng.choice([1, 1, 2, 5])
    return step * rng.randint(max(1, -(-lo // step)), max(1, hi // step))


def _gen_unit_conversion(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    ask = rng.choice(["Convert {v} to {to}.", "How many {to} are in {v}?",
                      "Express {v} in {to}."])
    if difficulty == "easy":
        (big, small), factor = rng.choice(sorted(_BASIC.items()))
        v = rng.randint(2, 60)
        result = v * factor
        lines = [f"1 {_UNITS[big][0]} = {factor} {_UNITS[small][1]}.",
                 f"Multiply: {v} * {factor} = {result}."]
        prompt = ask.format(v=_unit(big, v), to=_UNITS[small][1])
        return prompt, "\n".join(lines), _num(result)
    if difficulty == "medium":
        mode = rng.choice(["down", "up", "two_hop", "imperial_metric"])
        if mode == "two_hop":
            a, b, c = rng.choice(_TWO_HOP)
            f1, f2 = _BASIC[(a, b)], _BASIC[(b, c)]
            v = rng.randint(2, 30)
            mid, result = v * f1, v * f1 * f2
            lines = [f"1 {_UNITS[a][0]} = {f1} {_UNITS[b][1]} and 1 {_UNITS[b][0]} = {f2} "
                     f"{_UNITS[c][1]}.", f"{v} * {f1} = {mid} {_UNITS[b][1]}.",
                     f"{mid} * {f2} = {result} {_UNITS[c][1]}."]
            prompt = ask.format(v=_unit(a, v), to=_UNITS[c][1])
            return prompt, "\n".join(lines), _num(result)
        if mode == "imperial_metric":
            src, factor = rng.choice([("in", Fraction(254, 100)), ("ft", Fraction(3048, 100))])
            v = rng.randint(2, 40)
            result = v * factor
            lines = [f"1 {_UNITS[src][0]} = {_num(factor)} centimeters exactly.",
                     f"{v} * {_num(factor)} = {_num(result)}."]
            prompt = ask.format(v=_unit(src, v), to="centimeters")
            return prompt, "\n".join(lines), _num(result)
        # Feet to miles (/5280) gives decimals like 1.39375: keep that one to "down".
        pairs = sorted(_BASIC.items()) if mode == "down" else [
            (pair, f) for pair, f in sorted(_BASIC.items()) if pair != ("mi", "ft")]
        (big, small), factor = rng.choice(pairs)
        if mode == "down":  # a decimal amount of the big unit
            v = Fraction(rng.randint(11, 99), rng.choice([2, 4, 10]))
            if v.denominator == 1:
                v += Fraction(1, 2)
            result = v * factor
            lines = [f"1 {_UNITS[big][0]} = {factor} {_UNITS[small][1]}.",
                     f"{_num(v)} * {factor} = {_num(result)}."]
            prompt = ask.format(v=_unit(big, v), to=_UNITS[small][1])
            return prompt, "\n".join(lines), _num(result)
        v = _nice_multiple(rng, Fraction(1, factor), factor // 2 + 1, factor * 40)
        result = Fraction(v, factor)
        lines = [f"1 {_UNITS[big][0]} = {factor} {_UNITS[small][1]}, so divide by {factor}.",
                 f"{v} / {factor} = {_num(result)}."]
        prompt = ask.format(v=_unit(small, v), to=_UNITS[big][1])
        return prompt, "\n".join(lines), _num(result)
    mode = rng.choice(["kmh_ms", "ms_kmh", "mixed_sum", "area"])
    if mode == "kmh_ms":
        v = 18 * rng.randint(1, 10)
        metres, result = v * 1000, Fraction(v * 1000, 3600)
        lines = ["1 km = 1000 m and 1 hour = 3600 seconds.",
                 f"{v} km per hour = {v} * 1000 = {metres} meters per hour.",
                 f"{metres} / 3600 = {_num(result)} meters per second."]
        prompt = (f"A car travels at {v} kilometers per hour. What is its speed in meters per "
                  "second?")
        return prompt, "\n".join(lines), _num(result)
    if mode == "ms_kmh":
        v = rng.randint(2, 40)
        per_hour, result = v * 3600, Fraction(v * 3600, 1000)
        lines = ["1 hour = 3600 seconds and 1 km = 1000 m.",
                 f"{v} m per second = {v} * 3600 = {per_hour} meters per hour.",
                 f"{per_hour} / 1000 = {_num(result)} kilometers per hour."]
        prompt = (f"A cyclist rides at {v} meters per second. What is the speed in kilometers "
                  "per hour?")
        return prompt, "\n".join(lines), _num(result)
    if mode == "area":
        big, small = rng.choice([("m", "cm"), ("ft", "in"), ("yd", "ft"), ("km", "m")])
        f = _BASIC[(big, small)]
        w, h = rng.randint(2, 15), rng.randint(2, 15)
        area, result = w * h, w * h * f * f
        lines = [f"Area: {w} * {h} = {area} square {_UNITS[big][1]}.",
                 f"1 square {_UNITS[big][0]} = {f} * {f} = {f * f} square {_UNITS[small][1]}.",
                 f"{area} * {f * f} = {result}."]
        prompt = (f"A rectangle is {_unit(big, w)} long and {_unit(big, h)} wide. What is its "
                  f"area in square {_UNITS[small][1]}?")
        return prompt, "\n".join(lines), _num(result)
    big, small = rng.choice(_MIXED)
    f = _BASIC[(big, small)]
    a1, a2 = rng.randint(1, 9), rng.randint(1, 9)
    b1, b2 = rng.randint(1, f - 1), rng.randint(1, f - 1)
    t1, t2 = a1 * f + b1, a2 * f + b2
    lines = [f"1 {_UNITS[big][0]} = {f} {_UNITS[small][1]}.",
             f"First: {a1} * {f} + {b1} = {t1} {_UNITS[small][1]}.",
             f"Second: {a2} * {f} + {b2} = {t2} {_UNITS[small][1]}.",
             f"Total: {t1} + {t2} = {t1 + t2}."]
    prompt = (f"What is {_unit(big, a1)} {_unit(small, b1)} plus {_unit(big, a2)} "
              f"{_unit(small, b2)}, in {_UNITS[small][1]}?")
    return prompt, "\n".join(lines), _num(t1 + t2)


# -------------------------------------------------------------------------------- date & time

_WEEKDAYS = tuple(calendar.day_name)  # Monday .. Sunday


def _month_days(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _month_label(year: int, month: int) -> str:
    days = _month_days(year, month)
    leap = " (a leap year)" if month == 2 and days == 29 else ""
    return f"{calendar.month_name[month]} {year}{leap} has {days} days"


def _add_days_lines(start: dt.date, n: int) -> tuple[list[str], dt.date]:
    """Walk month by month from ``start`` for ``n`` days; every step is an equation."""
    dim = _month_days(start.year, start.month)
    left = dim - start.day
    if n <= left:
        end = start + dt.timedelta(days=n)
        return [f"Day of month: {start.day} + {n} = {end.day}."], end
    lines = [f"{_month_label(start.year, start.month)}: {dim} - {start.day} = {left} days to "
             f"its end, and {n} - {left} = {n - left} days are left."]
    remaining, year, month = n - left, start.year, start.month
    while True:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        dim = _month_days(year, month)
        if remaining <= dim:
            end = dt.date(year, month, remaining)
            lines.append(f"That lands on day {remaining} of {calendar.month_name[month]} {year}.")
            return lines, end
        lines.append(f"{_month_label(year, month)}: {remaining} - {dim} = {remaining - dim} left.")
        remaining -= dim


def _between_lines(a: dt.date, b: dt.date) -> tuple[list[str], int]:
    """Days from ``a`` to ``b`` (b > a), counted month by month."""
    if (a.year, a.month) == (b.year, b.month):
        n = b.day - a.day
        return [f"Same month: {b.day} - {a.day} = {n}."], n
    dim = _month_days(a.year, a.month)
    parts = [dim - a.day]
    lines = [f"{_month_label(a.year, a.month)}: {dim} - {a.day} = {dim - a.day} days to its end."]
    full = []
    year, month = a.year, a.month
    while True:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if (year, month) == (b.year, b.month):
            break
        days = _month_days(year, month)
        parts.append(days)
        leap = ", leap year" if month == 2 and days == 29 else ""
        full.append(f"{calendar.month_name[month]} {year} ({days}{leap})")
    if full:
        lines.append(f"Full months in between: {', '.join(full)}.")
    parts.append(b.day)
    lines.append(f"Then {b.day} days into {calendar.month_name[b.month]}.")
    total = sum(parts)
    lines.append(f"Total: {' + '.join(str(p) for p in parts)} = {total}.")
    return lines, total


def _rand_date(rng: random.Random, y0: int = 2019, y1: int = 2030) -> dt.date:
    start = dt.date(y0, 1, 1).toordinal()
    return dt.date.fromordinal(rng.randint(start, dt.date(y1, 12, 31).toordinal()))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _gen_date_time(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    kinds = {"easy": ["add_days", "clock_add"],
             "medium": ["add_days", "between", "duration", "weekday"],
             "hard": ["add_days", "between", "weekday", "clock_wrap"]}[difficulty]
    kind = rng.choice(kinds)
    if kind == "add_days":
        start = _rand_date(rng)
        n = rng.randint(*{"easy": (2, 20), "medium": (20, 90), "hard": (90, 200)}[difficulty])
        lines, end = _add_days_lines(start, n)
        prompt = (f"What is the date {n} days after {start.isoformat()}? Answer in YYYY-MM-DD "
                  "format.")
        lines.append(f"The date is {end.isoformat()}.")
        return prompt, "\n".join(lines), end.isoformat()
    if kind in ("between", "weekday"):
        a = _rand_date(rng)
        span = {"medium": (10, 100), "hard": (60, 250)}[difficulty]
        b = a + dt.timedelta(days=rng.randint(*span))
        lines, n = _between_lines(a, b)
        if kind == "between":
            prompt = f"How many days are there from {a.isoformat()} to {b.isoformat()}?"
            return prompt, "\n".join(lines), _num(n)
        wa = _WEEKDAYS[a.weekday()]
        wb = _WEEKDAYS[(a.weekday() + n) % 7]
        weeks, rest = divmod(n, 7)
        days = "day" if rest == 1 else "days"
        lines.append(f"{weeks} * 7 + {rest} = {n}, so the weekday moves {rest} {days} ahead.")
        lines.append(f"{rest} {days} after {wa} is {wb}.")
        prompt = f"{a.isoformat()} is a {wa}. What day of the week is {b.isoformat()}?"
        return prompt, "\n".join(lines), wb
    if kind == "duration":
        t0 = rng.randint(6 * 60, 20 * 60)
        t0 -= t0 % 5
        length = rng.randint(20, 200)
        length -= length % 5
        t1 = t0 + length
        event = rng.choice(["A movie", "A meeting", "A football match", "A concert", "A class"])
        h0, m0, h1, m1 = t0 // 60, t0 % 60, t1 // 60, t1 % 60
        lines = [f"Start: {h0} * 60 + {m0} = {t0} minutes after midnight.",
                 f"End: {h1} * 60 + {m1} = {t1} minutes after midnight.",
                 f"Length: {t1} - {t0} = {length} minutes."]
        prompt = (f"{event} starts at {_hhmm(t0)} and ends at {_hhmm(t1)}. How many minutes "
                  "does it last?")
        return prompt, "\n".join(lines), _num(length)
    # clock_add / clock_wrap: a start time plus a duration, 24-hour clock.
    if kind == "clock_add":
        t0 = rng.randint(5 * 60, 15 * 60)
        dur = rng.randint(10, 6 * 60)
    else:
        t0 = rng.randint(18 * 60, 23 * 60 + 59)
        dur = rng.randint(24 * 60 - t0 + 1, 24 * 60 - t0 + 8 * 60)
    dh, dm = divmod(dur, 60)
    h0, m0 = divmod(t0, 60)
    total = t0 + dur
    lines = [f"Start: {h0} * 60 + {m0} = {t0} minutes after midnight.",
             f"Duration: {dh} * 60 + {dm} = {dur} minutes.",
             f"{t0} + {dur} = {total}."]
    if total >= 24 * 60:
        lines.append(f"That passes midnight: {total} - 1440 = {total - 1440}.")
        total -= 24 * 60
    h, m = divmod(total, 60)
    lines.append(f"{h} * 60 + {m} = {total}, so the time is {_hhmm(total)}.")
    trip = rng.choice(["A train leaves", "A flight departs", "A bus leaves", "A shift starts"])
    question = ("At what time does the shift end?" if trip == "A shift starts"
                else "At what time does it arrive?")
    prompt = (f"{trip} at {_hhmm(t0)} and {'lasts' if trip == 'A shift starts' else 'takes'} "
              f"{dh} hours {dm} minutes. {question} Answer in 24-hour HH:MM format.")
    return prompt, "\n".join(lines), _hhmm(total)


# ----------------------------------------------------------------------------------- sequences


def _seq_predictions(terms: Sequence[int]) -> dict[str, int]:
    """Next term predicted by every family that fits ``terms`` (used to reject ambiguity)."""
    out: dict[str, int] = {}
    d = [b - a for a, b in zip(terms, terms[1:], strict=False)]
    if len(set(d)) == 1:
        out["arithmetic"] = terms[-1] + d[0]
    if all(a != 0 for a in terms) and len({Fraction(b, a) for a, b in zip(terms, terms[1:],
                                                                          strict=False)}) == 1:
        nxt = Fraction(terms[-1] * terms[1], terms[0])
        if nxt.denominator == 1:
            out["geometric"] = int(nxt)
    dd = [b - a for a, b in zip(d, d[1:], strict=False)]
    if len(set(dd)) == 1:
        out["quadratic"] = terms[-1] + d[-1] + dd[0]
    if all(terms[i] == terms[i - 1] + terms[i - 2] for i in range(2, len(terms))):
        out["fibonacci"] = terms[-1] + terms[-2]
    odd, even = terms[0::2], terms[1::2]
    if len(odd) >= 3 and len(even) >= 3 and all(
        len({b - a for a, b in zip(s, s[1:], strict=False)}) == 1 for s in (odd, even)
    ):
        s = odd if len(terms) % 2 == 0 else even
        out["interleaved"] = s[-1] + (s[1] - s[0])
    if terms[1] != terms[0]:
        p = Fraction(terms[2] - terms[1], terms[1] - terms[0])
        q = terms[1] - p * terms[0]
        if all(terms[i + 1] == p * terms[i] + q for i in range(len(terms) - 1)):
            nxt = p * terms[-1] + q
            if nxt.denominator == 1:
                out["affine"] = int(nxt)
    return out


def _gen_sequence(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    family = rng.choice({"easy": ["arithmetic", "arithmetic_down"],
                         "medium": ["geometric", "quadratic", "arithmetic_big"],
                         "hard": ["fibonacci", "interleaved", "affine", "quadratic"]}[difficulty])
    shown = {"easy": 5, "medium": 5, "hard": 6}[difficulty]
    if family in ("arithmetic", "arithmetic_down", "arithmetic_big"):
        d = rng.randint(2, 12) if family != "arithmetic_big" else rng.randint(13, 99)
        a0 = rng.randint(1, 60) if family != "arithmetic_big" else rng.randint(50, 500)
        if family == "arithmetic_down":
            a0 += d * (shown + 1)
            d = -d
        terms = [a0 + d * i for i in range(shown)]
        nxt = terms[-1] + d
        if d > 0:
            diffs = ", ".join(f"{b} - {a} = {d}" for a, b in zip(terms, terms[1:], strict=False))
            lines = [f"Differences: {diffs}.", f"The difference is always {d}, so the next "
                     f"term is {terms[-1]} + {d} = {nxt}."]
        else:
            diffs = ", ".join(f"{a} - {b} = {-d}" for a, b in zip(terms, terms[1:], strict=False))
            lines = [f"Each term drops by the same amount: {diffs}.",
                     f"The next term is {terms[-1]} - {-d} = {nxt}."]
    elif family == "geometric":
        r = rng.choice([2, 2, 3, 3, 4, 5])
        a0 = rng.randint(1, 6)
        terms = [a0 * r**i for i in range(shown)]
        nxt = terms[-1] * r
        ratios = ", ".join(f"{b} / {a} = {r}" for a, b in zip(terms, terms[1:], strict=False))
        lines = [f"Ratios: {ratios}.", f"Each term is {r} times the one before, so the next "
                 f"term is {terms[-1]} * {r} = {nxt}."]
    elif family == "quadratic":
        a0, d0, dd = rng.randint(1, 30), rng.randint(1, 9), rng.randint(1, 4)
        terms = [a0]
        for i in range(shown - 1):
            terms.append(terms[-1] + d0 + dd * i)
        d = [b - a for a, b in zip(terms, terms[1:], strict=False)]
        nd = d[-1] + dd
        nxt = terms[-1] + nd
        lines = ["Differences: " + ", ".join(f"{b} - {a} = {b - a}" for a, b in
                                             zip(terms, terms[1:], strict=False)) + ".",
                 f"The differences grow by {dd} each time, so the next difference is "
                 f"{d[-1]} + {dd} = {nd}.", f"Next term: {terms[-1]} + {nd} = {nxt}."]
    elif family == "fibonacci":
        a, b = rng.randint(1, 9), rng.randint(1, 12)
        terms = [a, b]
        while len(terms) < shown:
            terms.append(terms[-1] + terms[-2])
        nxt = terms[-1] + terms[-2]
        sums = ", ".join(f"{terms[i - 2]} + {terms[i - 1]} = {terms[i]}"
                         for i in range(2, len(terms)))
        lines = [f"Each term is the sum of the two before it: {sums}.",
                 f"So the next term is {terms[-2]} + {terms[-1]} = {nxt}."]
    elif family == "interleaved":
        shown = 7
        o0, od = rng.randint(1, 20), rng.randint(2, 9)
        e0, ed = rng.randint(30, 90), rng.randint(2, 7)
        odd = [o0 + od * i for i in range(4)]
        even = [e0 - ed * i for i in range(4)]
        terms = [x for pair in zip(odd, even, strict=False) for x in pair][:shown]
        nxt = even[2] - ed
        lines = [f"Terms in odd positions: {', '.join(map(str, odd))} go up by {od}.",
                 f"Terms in even positions: {', '.join(map(str, even[:3]))} go down by {ed}.",
                 f"The next term is the 8th, an even position: {even[2]} - {ed} = {nxt}."]
    else:  # affine: x -> p*x + q
        p, q = rng.choice([2, 3]), rng.randint(1, 5) * rng.choice([1, -1])
        a0 = rng.randint(2, 9)
        if p * a0 + q <= a0:
            q = abs(q)
        shown = 5
        terms = [a0]
        while len(terms) < shown:
            terms.append(p * terms[-1] + q)
        nxt = p * terms[-1] + q
        op = "+" if q > 0 else "-"
        steps = ", ".join(f"{a} * {p} {op} {abs(q)} = {b}" for a, b in
                          zip(terms, terms[1:], strict=False))
        lines = [f"Each term is {p} times the previous one {'plus' if q > 0 else 'minus'} "
                 f"{abs(q)}: {steps}.", f"Next: {terms[-1]} * {p} {op} {abs(q)} = {nxt}."]
    preds = _seq_predictions(terms)
    if set(preds.values()) != {nxt}:
        raise _Retry(f"ambiguous sequence {terms}: {preds}")
    prompt = rng.choice(["What is the next number in the sequence {s}, ...?",
                         "Find the next term: {s}, ...",
                         "Which number comes next: {s}, ...?"]).format(
        s=", ".join(map(str, terms)))
    return prompt, "\n".join(lines), _num(nxt)


# ------------------------------------------------------------------------------------ ordering

# (more, less, most, least)
_ATTRIBUTES = (("taller", "shorter", "tallest", "shortest"),
               ("older", "younger", "oldest", "youngest"),
               ("heavier", "lighter", "heaviest", "lightest"),
               ("faster", "slower", "fastest", "slowest"),
               ("richer", "poorer", "richest", "poorest"))


def _count_orders(people: Sequence[str], facts: Iterable[tuple[str, str]]) -> int:
    facts = list(facts)
    count = 0
    for perm in itertools.permutations(people):
        rank = {p: i for i, p in enumerate(perm)}
        count += all(rank[a] < rank[b] for a, b in facts)
    return count


def _gen_ordering(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    n = {"easy": 3, "medium": 4, "hard": 5}[difficulty]
    more, less, most, least = rng.choice(_ATTRIBUTES)
    people = rng.sample(_NAMES, n)
    order = people[:]  # order[0] has the most of the attribute
    rng.shuffle(order)
    if difficulty == "hard":
        pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
        rng.shuffle(pairs)
        facts: list[tuple[str, str]] = []
        for pair in pairs:
            facts.append(pair)
            if _count_orders(people, facts) == 1:
                break
        # Drop facts that the others already imply, so none is redundant.
        for pair in list(facts):
            rest = [f for f in facts if f != pair]
            if _count_orders(people, rest) == 1:
                facts = rest
    else:
        facts = list(zip(order, order[1:], strict=False))
        rng.shuffle(facts)
    sentences = [f"{a} is {more} than {b}." if rng.random() < 0.5 else f"{b} is {less} than {a}."
                 for a, b in facts]
    # Kahn's algorithm: with a unique order exactly one person has nobody above them each time.
    lines = ["Write each fact as bigger > smaller: "
             + ", ".join(f"{a} > {b}" for a, b in facts) + "."]
    remaining, ranked = list(people), []
    while remaining:
        tops = [p for p in remaining if not any(b == p and a in remaining for a, b in facts)]
        assert len(tops) == 1, (facts, tops)
        top = tops[0]
        if not ranked:
            lines.append(f"Nobody is {more} than {top}, so {top} is the {most}.")
        elif len(remaining) > 1:
            lines.append(f"Among the rest, nobody is {more} than {top}, so {top} comes next.")
        ranked.append(top)
        remaining.remove(top)
    assert ranked == order
    lines.append(f"Order from {most} to {least}: {', '.join(ranked)}.")
    qkind = rng.choice({"easy": ["most", "least", "pair"], "medium": ["most", "least", "second"],
                        "hard": ["second", "count", "least", "second_least"]}[difficulty])
    if qkind == "most":
        question, answer = f"Who is the {most}?", ranked[0]
    elif qkind == "least":
        question, answer = f"Who is the {least}?", ranked[-1]
    elif qkind == "second":
        question, answer = f"Who is the second {most}?", ranked[1]
    elif qkind == "second_least":
        question, answer = f"Who is the second {least}?", ranked[-2]
    elif qkind == "pair":
        x, y = rng.sample(people, 2)
        question = f"Who is {more}, {x} or {y}?"
        answer = x if ranked.index(x) < ranked.index(y) else y
    else:
        x = rng.choice(ranked[1:])
        k = ranked.index(x)
        question = f"How many people are {more} than {x}?"
        answer = _num(k)
        lines.append(f"{x} is in position {k + 1}, so {k + 1} - 1 = {k} people are {more}.")
    lines.append(f"The answer is {answer}.")
    prompt = " ".join(sentences) + " " + question
    return prompt, "\n".join(lines), answer


# ------------------------------------------------------------------------------ knights/knaves

# A statement is (kind, x, y); truth is a function of the knight/knave assignment.
_SIMPLE = ("knight", "knave")
_COMPOUND = ("both_knights", "both_knaves", "one_knave", "same", "different")


def _statement_text(kind: str, x: str, y: str, speaker: str) -> str:
    """The statement in words; the speaker refers to themself as "I"/"me"."""
    if speaker in (x, y):
        other = y if x == speaker else x
        return {
            "both_knights": f"{other} and I are both knights.",
            "both_knaves": f"{other} and I are both knaves.",
            "one_knave": f"At least one of {other} and me is a knave.",
            "same": f"{other} and I are the same kind.",
            "different": f"{other} and I are different kinds.",
        }[kind]
    return {
        "knight": f"{x} is a knight.",
        "knave": f"{x} is a knave.",
        "both_knights": f"{x} and {y} are both knights.",
        "both_knaves": f"{x} and {y} are both knaves.",
        "one_knave": f"At least one of {x} and {y} is a knave.",
        "same": f"{x} and {y} are the same kind.",
        "different": f"{x} and {y} are different kinds.",
    }[kind]


def _statement_true(kind: str, x: str, y: str, knight: dict[str, bool]) -> bool:
    return {
        "knight": lambda: knight[x],
        "knave": lambda: not knight[x],
        "both_knights": lambda: knight[x] and knight[y],
        "both_knaves": lambda: not knight[x] and not knight[y],
        "one_knave": lambda: not knight[x] or not knight[y],
        "same": lambda: knight[x] == knight[y],
        "different": lambda: knight[x] != knight[y],
    }[kind]()


def _gen_knights_knaves(rng: random.Random, difficulty: str) -> tuple[str, str, str]:
    n = 2 if difficulty == "easy" else 3
    people = rng.sample(_NAMES, n)
    kinds = _COMPOUND if difficulty == "hard" else _SIMPLE + _COMPOUND
    statements = []
    for speaker in people:
        others = [p for p in people if p != speaker]
        kind = rng.choice(kinds)
        if kind in _SIMPLE:
            # Only about others: "I am a knight" fits every case, "I am a knave" none.
            x, y = rng.choice(others), ""
        else:
            x, y = sorted(rng.sample(people, 2), key=people.index)
        statements.append((speaker, kind, x, y))
    solutions = []
    # One short line per case keeps the hard puzzles within ~256 Gemma tokens.
    lines = [f"Check all {2**n} cases for {', '.join(people)} in that order "
             "(K = knight, N = knave)."]
    for values in itertools.product([True, False], repeat=n):
        knight = dict(zip(people, values, strict=True))
        label = " ".join("K" if v else "N" for v in values)
        bad = next((s for s, k, x, y in statements
                    if _statement_true(k, x, y, knight) != knight[s]), None)
        if bad is None:
            solutions.append(knight)
            lines.append(f"{label}: all statements fit. Yes.")
        elif knight[bad]:
            lines.append(f"{label}: {bad}, a knight, would lie. No.")
        else:
            lines.append(f"{label}: {bad}, a knave, would tell the truth. No.")
    if len(solutions) != 1:
        raise _Retry(f"{len(solutions)} solutions")
    knights = sorted(p for p in people if solutions[0][p])
    answer = ", ".join(knights) if knights else "none"
    lines.append(f"Only one case works, so the knights are: {answer}.")
    said = " ".join(f'{s} says: "{_statement_text(k, x, y, s)}"' for s, k, x, y in statements)
    prompt = (f"Knights always tell the truth and knaves always lie. You meet "
              f"{', '.join(people[:-1])} and {people[-1]}. {said} Which of them are knights? "
              "Give the names in alphabetical order, separated by commas, or none.")
    return prompt, "\n".join(lines), answer


# ------------------------------------------------------------------------------------- driver


class _Retry(Exception):
    """A candidate was unusable (ambiguous or with several solutions): draw another."""


GENERATORS: dict[str, Callable[[random.Random, str], tuple[str, str, str]]] = {
    "arithmetic": _gen_arithmetic,
    "unit_conversion": _gen_unit_conversion,
    "date_time": _gen_date_time,
    "sequence": _gen_sequence,
    "ordering": _gen_ordering,
    "knights_knaves": _gen_knights_knaves,
}


def generate_one(category: str, difficulty: str, seed: int | str) -> dict[str, str]:
    """One item of ``category``/``difficulty`` drawn from ``random.Random(str(seed))``.

    The result has no ``id``; :func:`generate_items` adds one.
    """
    if category not in GENERATORS:
        raise ValueError(f"unknown category {category!r}; allowed: {', '.join(CATEGORIES)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; allowed: {', '.join(DIFFICULTIES)}")
    for attempt in range(_MAX_ATTEMPTS):
        rng = random.Random(f"{seed}/{attempt}")
        try:
            prompt, reasoning, answer = GENERATORS[category](rng, difficulty)
        except _Retry:
            continue
        return {"section": SECTIONS[category], "category": category, "difficulty": difficulty,
                "prompt": prompt, "reasoning": reasoning, "answer": answer}
    raise RuntimeError(f"{category}/{difficulty}: no usable item in {_MAX_ATTEMPTS} attempts")


def generate_items(
    n: int,
    seed: int,
    categories: Sequence[str] | None = None,
    *,
    difficulties: Sequence[str] | None = None,
    exclude_prompts: Iterable[str] = (),
    id_prefix: str | None = None,
) -> list[dict[str, str]]:
    """``n`` distinct items, balanced round-robin over (category, difficulty) cells.

    Item ``i`` belongs to cell ``i % n_cells``, so counts per category and per difficulty
    differ by at most one. Prompts are unique after :func:`normalize_prompt`, and never equal
    (normalized) to any of ``exclude_prompts`` (use it to keep a training set disjoint from
    an evaluation set). Ids are ``f"{id_prefix}-{i:05d}"`` (default prefix ``syn{seed}``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    categories = list(categories) if categories is not None else list(CATEGORIES)
    difficulties = list(difficulties) if difficulties is not None else list(DIFFICULTIES)
    for c in categories:
        if c not in GENERATORS:
            raise ValueError(f"unknown category {c!r}; allowed: {', '.join(CATEGORIES)}")
    for d in difficulties:
        if d not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {d!r}; allowed: {', '.join(DIFFICULTIES)}")
    if n and not (categories and difficulties):
        raise ValueError("categories and difficulties must not be empty")
    cells = [(c, d) for c in categories for d in difficulties]
    seen = {normalize_prompt(p) for p in exclude_prompts}
    prefix = id_prefix if id_prefix is not None else f"syn{seed}"
    items: list[dict[str, str]] = []
    for i in range(n):
        category, difficulty = cells[i % len(cells)]
        for attempt in range(_MAX_ATTEMPTS):
            item = generate_one(category, difficulty, f"{seed}/{i}/{attempt}")
            key = normalize_prompt(item["prompt"])
            if key not in seen:
                seen.add(key)
                items.append({"id": f"{prefix}-{i:05d}", **item})
                break
        else:
            raise RuntimeError(
                f"{category}/{difficulty}: no new prompt in {_MAX_ATTEMPTS} attempts; "
                "the generator's space is exhausted for this many items"
            )
    return items


# Seeds and sizes of the shipped files (kaggle_lib/data/files/, scripts/make_datasets.py).
BUILTIN_SEED = 20240601
BUILTIN_SIZES = {"train": 4000, "eval": 300}


def build_builtin_splits(
    n_train: int = BUILTIN_SIZES["train"], n_eval: int = BUILTIN_SIZES["eval"],
    seed: int = BUILTIN_SEED,
) -> dict[str, list[dict[str, str]]]:
    """The shipped train/eval splits: eval first, then train with eval's prompts excluded.

    Generating eval first means its items do not change when ``n_train`` changes. Eval items
    keep their reference reasoning (handy for failure analysis; never shown to the model).
    """
    eval_items = generate_items(n_eval, seed + 1, id_prefix="eval")
    train_items = generate_items(
        n_train, seed, exclude_prompts=[it["prompt"] for it in eval_items], id_prefix="train"
    )
    return {"train": train_items, "eval": eval_items}
