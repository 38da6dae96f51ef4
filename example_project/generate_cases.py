"""Regrow the example's eval cases: IT-support tickets with known answers.

    python generate_cases.py            # rewrite evals/*.cases.jsonl (same seed, same files)
    python generate_cases.py --check    # only verify the committed files

Two tasks a support desk runs on every incoming ticket:

- ``due_dates``: the ticket form's free-text "needed by" field, in whatever form the requester
  typed it; the answer is that date as ``YYYY-MM-DD``, which the desk's queue sorts by.
- ``hardware_requests``: the ticket asks for equipment; the answer is the order as JSON
  (requester, item, quantity, office) for the procurement system.

Every reference is computed by the generator, then checked by re-reading the ticket text with
an independent parser (``check``): a case whose text does not say what its reference claims
stops the script. Cases are generated until each suite has at least ``--train`` cases on the
train side and ``--holdout`` on the holdout side of the plugin's stable split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pytest_distill import split_of

HERE = Path(__file__).resolve().parent
EVALS = HERE / "evals"
SEED = 20261127

FIRST = [
    "Priya",
    "Tomasz",
    "Aiko",
    "Daniel",
    "Fatima",
    "Lena",
    "Marcus",
    "Sofia",
    "Kwame",
    "Elena",
    "Ravi",
    "Hannah",
    "Jonas",
    "Mei",
    "Oliver",
    "Zainab",
    "Lucas",
    "Ingrid",
    "Mateo",
    "Chloe",
    "Yusuf",
    "Nora",
    "Diego",
    "Anna",
]
LAST = [
    "Shah",
    "Nowak",
    "Tanaka",
    "Becker",
    "Haddad",
    "Fischer",
    "Brown",
    "Rossi",
    "Mensah",
    "Petrova",
    "Iyer",
    "Schmidt",
    "Berg",
    "Chen",
    "Walsh",
    "Okafor",
    "Silva",
    "Larsen",
    "Garcia",
    "Dubois",
    "Demir",
    "Keller",
    "Morales",
    "Novak",
]
OFFICES = ["Berlin", "London", "Madrid", "Toronto", "Singapore", "Austin", "Warsaw", "Dublin"]
ITEMS = [
    "laptop",
    "monitor",
    "keyboard",
    "tablet",
    "headset",
    "docking station",
    "webcam",
    "USB-C charger",
    "phone",
    "projector",
]

# Month names are spelt out here rather than taken from strftime, so the files do not depend
# on the machine's locale.
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
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

DATE_STYLES: dict[str, Callable[[dt.date], str]] = {
    "long": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "day-first": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "short": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "weekday": lambda d: f"{DAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
}
# No 9/5/2027: the desk serves offices on both sides of the Atlantic, where it means two dates.

ORDER_TEMPLATES = [
    "Hi IT, please order {quantity} {item_n} for the {office} office. Thanks, {name}",
    "{name} ({office}): we need {quantity} {item_n} for the new starters.",
    "Could you get {quantity} {item_n} shipped to {office}? Requested by {name}.",
    "Hardware request from {name}, {office} office: {quantity} x {item}.",
    "Hello, this is {name} in {office}. Our team needs {quantity} new {item_n}, please.",
    "Order request: {quantity} {item_n}. Deliver to the {office} office. - {name}",
]


def plural(item: str, quantity: int) -> str:
    if quantity == 1:
        return item
    if item.endswith(("ch", "sh", "s")):
        return item + "es"
    return item + "s"


# --- generation ------------------------------------------------------------------------------


def due_date_case(rng: random.Random) -> tuple[dict[str, Any], str]:
    day = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(3 * 365))
    style = rng.choice(sorted(DATE_STYLES))
    return {"needed_by": DATE_STYLES[style](day)}, day.isoformat()


def order_case(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    item, quantity, office = rng.choice(ITEMS), rng.randint(1, 12), rng.choice(OFFICES)
    ticket = rng.choice(ORDER_TEMPLATES).format(
        name=name, office=office, item=item, item_n=plural(item, quantity), quantity=quantity
    )
    order = {"requester": name, "item": item, "quantity": quantity, "office": office}
    return {"ticket": ticket}, order


SUITES: dict[str, tuple[str, Callable[[random.Random], tuple[dict[str, Any], Any]]]] = {
    "due_dates": ("due", due_date_case),
    "hardware_requests": ("order", order_case),
}


def generate(suite: str, train: int, holdout: int, holdout_share: float) -> list[dict[str, Any]]:
    prefix, make = SUITES[suite]
    rng = random.Random(f"{SEED}:{suite}")
    cases, sides = [], {"train": 0, "holdout": 0}
    seen: set[str] = set()
    number = 0
    while sides["train"] < train or sides["holdout"] < holdout:
        case_vars, reference = make(rng)
        text = json.dumps(case_vars, sort_keys=True)
        if text in seen:
            continue
        seen.add(text)
        number += 1
        case_id = f"{prefix}-{number:03d}"
        side = split_of(f"{suite}::{case_id}", holdout_share)
        if sides[side] >= (train if side == "train" else holdout):
            continue  # that side is full: skip the id, the next one may fall on the other
        sides[side] += 1
        cases.append({"id": case_id, "vars": case_vars, "reference": reference})
    return cases


# --- the independent check -------------------------------------------------------------------

_MONTH = "|".join(MONTHS)
_SHORT = "|".join(m[:3] for m in MONTHS)
_DATE_PATTERNS = [
    (re.compile(rf"\b({_MONTH}) (\d{{1,2}}), (\d{{4}})\b"), ("month", "day", "year")),
    (re.compile(rf"\b(\d{{1,2}}) ({_MONTH}) (\d{{4}})\b"), ("day", "month", "year")),
    (re.compile(rf"\b({_SHORT}) (\d{{1,2}}), (\d{{4}})\b"), ("month", "day", "year")),
]


def read_due_date(ticket: str) -> str:
    """The one date a text mentions, parsed without the generator's formatting code."""
    found = set()
    for pattern, order in _DATE_PATTERNS:
        for match in pattern.finditer(ticket):
            parts = dict(zip(order, match.groups(), strict=True))
            month = parts["month"]
            number = int(month) if month.isdigit() else [m[:3] for m in MONTHS].index(month[:3]) + 1
            found.add(dt.date(int(parts["year"]), number, int(parts["day"])).isoformat())
    if len(found) != 1:
        raise ValueError(f"expected exactly one date in {ticket!r}, found {sorted(found)}")
    date = found.pop()
    named = [d for d in DAYS if d in ticket]
    if named and named != [DAYS[dt.date.fromisoformat(date).weekday()]]:
        raise ValueError(f"ticket {ticket!r} names the wrong weekday for {date}")
    return date


def read_order(ticket: str) -> dict[str, Any]:
    """Requester, item, quantity and office, found by matching the catalogues in the text."""
    names = {f"{f} {last}" for f in FIRST for last in LAST if f"{f} {last}" in ticket}
    offices = {o for o in OFFICES if re.search(rf"\b{o}\b", ticket)}
    # Longest names first, so "USB-C charger" is not also counted as something shorter.
    items = [
        i for i in sorted(ITEMS, key=len, reverse=True) if re.search(rf"\b{re.escape(i)}", ticket)
    ]
    quantities = re.findall(r"\b(\d+)\b", ticket)
    if not (len(names) == len(offices) == len(items) == len(quantities) == 1):
        raise ValueError(f"ticket {ticket!r} is ambiguous: {names}, {offices}, {items}")
    quantity, item = int(quantities[0]), items[0]
    said = rf"\b{quantity} (x {re.escape(item)}|(new )?{re.escape(plural(item, quantity))})\b"
    if re.search(said, ticket) is None:
        raise ValueError(f"ticket {ticket!r} does not say {quantity} {item} grammatically")
    return {
        "requester": names.pop(),
        "item": items[0],
        "quantity": quantity,
        "office": offices.pop(),
    }


READERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "due_dates": lambda case_vars: read_due_date(case_vars["needed_by"]),
    "hardware_requests": lambda case_vars: read_order(case_vars["ticket"]),
}


def check(suite: str, cases: list[dict[str, Any]]) -> None:
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{suite}: duplicate case ids")
    for case in cases:
        try:
            got = READERS[suite](case["vars"])
        except ValueError as exc:
            raise SystemExit(f"{suite} {case['id']}: {exc}; fix generate_cases.py") from None
        if got != case["reference"]:
            raise SystemExit(
                f"{suite} {case['id']}: the text says {got!r}, the reference "
                f"is {case['reference']!r}; fix generate_cases.py"
            )


def path_of(suite: str) -> Path:
    return EVALS / f"{suite}.cases.jsonl"


def lines(cases: list[dict[str, Any]]) -> Iterator[str]:
    for case in cases:
        yield json.dumps(case, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train", type=int, default=150, help="train cases per suite")
    parser.add_argument("--holdout", type=int, default=50, help="holdout cases per suite")
    parser.add_argument(
        "--holdout-share", type=float, default=0.2, help="the project's distill_holdout"
    )
    parser.add_argument("--check", action="store_true", help="verify the files, write nothing")
    args = parser.parse_args(argv)
    for suite in SUITES:
        if args.check:
            text = path_of(suite).read_text(encoding="utf-8")
            cases = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            cases = generate(suite, args.train, args.holdout, args.holdout_share)
        check(suite, cases)
        if not args.check:
            path_of(suite).write_text("\n".join(lines(cases)) + "\n", encoding="utf-8")
        held = sum(split_of(f"{suite}::{c['id']}", args.holdout_share) == "holdout" for c in cases)
        print(f"{suite}: {len(cases)} cases ({len(cases) - held} train, {held} holdout), checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
