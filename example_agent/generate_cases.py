"""Regrow the agent example's eval cases: IT-desk requests with the tool calls that answer them.

    python generate_cases.py            # rewrite evals/*.cases.jsonl (same seed, same files)
    python generate_cases.py --check    # only verify the committed files

Two suites, both offered the tools in ``evals/tools.yaml`` (``lookup_user``,
``reset_password``, ``open_ticket``):

- ``desk_requests``: one message from a user. The right answer is one call (look a user up,
  reset a password, open a ticket with its category and priority), two calls at once (two
  resets, two look-ups), or no call at all (a question the assistant answers itself).
- ``follow_ups``: a conversation so far (the case's ``messages``) that ends in a tool result
  or a new request. After a look-up's result the right call uses the username the result
  gives (it is nowhere in the user's words); after a ticket or reset result the right answer
  is a reply, no call; after a look-up a new problem is a ticket.

The reference is always a list of expected calls, ``[]`` for "no call". Every case is checked
before it is written (``check``): its calls name the tools and their arguments are valid
against the tools' schemas, a ticket's category and priority are the ones the words say, and
a follow-up's username comes from the tool result and not from the user. Cases are generated
until each suite has at least ``--train`` cases on the train side and ``--holdout`` on the
holdout side of the plugin's stable split.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from pytest_distill import split_of

HERE = Path(__file__).resolve().parent
EVALS = HERE / "evals"
SEED = 20261203

FIRST = [
    "Priya", "Tomasz", "Aiko", "Daniel", "Fatima", "Lena", "Marcus", "Sofia", "Kwame", "Elena",
    "Ravi", "Hannah", "Jonas", "Mei", "Oliver", "Zainab", "Lucas", "Ingrid", "Mateo", "Chloe",
]  # fmt: skip
LAST = [
    "Shah", "Nowak", "Tanaka", "Becker", "Haddad", "Fischer", "Brown", "Rossi", "Mensah",
    "Petrova", "Iyer", "Schmidt", "Berg", "Chen", "Walsh", "Okafor", "Silva", "Larsen",
]  # fmt: skip
DEPARTMENTS = ["Finance", "Sales", "Legal", "Marketing", "Engineering", "Support"]

PROBLEMS = {
    "hardware": [
        "My laptop won't turn on.",
        "My monitor keeps flickering.",
        "The printer next to my desk is jammed.",
        "A key on my keyboard is broken.",
        "My docking station stopped charging my laptop.",
    ],
    "software": [
        "Outlook crashes every time I open it.",
        "Excel freezes when I open large files.",
        "Teams won't start since the update.",
        "I need Zoom installed on my laptop.",
        "My antivirus keeps showing an error.",
    ],
    "network": [
        "The office wifi keeps dropping.",
        "The VPN won't connect from home.",
        "I have no internet at my desk.",
        "The internet is very slow on our floor.",
    ],
    "access": [
        "I need access to the Finance shared drive.",
        "I get 'permission denied' on the HR folder.",
        "My badge doesn't open the office door.",
        "I need admin rights in the CRM.",
    ],
}
URGENCY = {
    "high": ["It's urgent.", "I can't work at all, please hurry.", "ASAP please."],
    "medium": ["Please fix it this week.", "It's slowing me down.", "Normal priority."],
    "low": ["No rush.", "Whenever you have time.", "Low priority."],
}
QUESTIONS = [
    "What are the IT desk's opening hours?",
    "Thanks, that fixed it!",
    "How do I lock my screen on Windows?",
    "What does VPN stand for?",
    "Which browser does the company recommend?",
    "How long should a good password be?",
    "Is it safe to open attachments from unknown senders?",
    "Where can I find the wifi password for guests?",
    "Do you work on weekends?",
    "How do I take a screenshot on a Mac?",
]
GREETINGS = ["", "Hi, ", "Hello! ", "Quick question: ", "Hey IT, "]

LOOKUP = [
    "Can you look up {name}'s account?",
    "Find the account of {name}, please.",
    "Who is {name}? I need their account details.",
    "Please check the account of {name}.",
]
RESET = [
    "Please reset the password for user {username}.",
    "User {username} forgot their password, reset it please.",
    "Reset the password of {username}.",
    "{username} is locked out, can you reset the password?",
]
TWO_RESETS = [
    "Reset the passwords for {username} and {other}.",
    "Users {username} and {other} both forgot their passwords, please reset them.",
]
TWO_LOOKUPS = [
    "Look up {name} and {other}.",
    "Can you find the accounts of {name} and {other}?",
]
RESET_BY_NAME = [
    "Please reset the password for {name}.",
    "{name} is locked out; please reset the password.",
    "Can you reset {name}'s password?",
]
THANKS_AND = ["Thanks. Also: ", "Great, thank you. One more thing: ", "OK. Another issue: "]


def username(name: str) -> str:
    """A person's account name: part of the surname, an initial and two digits."""
    first, last = name.split(" ")
    return f"{last.lower()[:6]}{first[0].lower()}{zlib.crc32(name.encode()) % 90 + 10}"


def call(tool: str, /, **arguments: str) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _two_people(rng: random.Random) -> tuple[str, str]:
    first = _person(rng)
    while (second := _person(rng)) == first:
        pass
    return first, second


def _problem(rng: random.Random) -> tuple[str, dict[str, Any]]:
    category = rng.choice(sorted(PROBLEMS))
    priority = rng.choice(sorted(URGENCY))
    text = f"{rng.choice(PROBLEMS[category])} {rng.choice(URGENCY[priority])}"
    return text, call("open_ticket", category=category, priority=priority)


# --- generation ------------------------------------------------------------------------------


def request_case(rng: random.Random) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    request, reference = _request(rng)
    return {"vars": {"request": request}}, reference


def _request(rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    kind = rng.choices(["lookup", "reset", "ticket", "two", "direct"], [4, 4, 5, 4, 3])[0]
    if kind == "lookup":
        name = _person(rng)
        return rng.choice(LOOKUP).format(name=name), [call("lookup_user", name=name)]
    if kind == "reset":
        user = username(_person(rng))
        text = rng.choice(RESET).format(username=user)
        return text, [call("reset_password", username=user)]
    if kind == "ticket":
        text, ticket = _problem(rng)
        return text, [ticket]
    if kind == "two":
        name, other = _two_people(rng)
        if rng.random() < 0.5:
            users = username(name), username(other)
            text = rng.choice(TWO_RESETS).format(username=users[0], other=users[1])
            return text, [call("reset_password", username=u) for u in users]
        text = rng.choice(TWO_LOOKUPS).format(name=name, other=other)
        return text, [call("lookup_user", name=n) for n in (name, other)]
    return rng.choice(GREETINGS) + rng.choice(QUESTIONS), []


def _turns(user: str, made: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "tool_calls": [{"id": "call_1", **made}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result)},
    ]


def _account(name: str, rng: random.Random) -> dict[str, Any]:
    return {
        "name": name,
        "username": username(name),
        "department": rng.choice(DEPARTMENTS),
        "status": rng.choice(["locked", "active"]),
    }


def follow_up_case(rng: random.Random) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kind = rng.choices(["reset_found_user", "report_result", "new_problem"], [6, 2, 2])[0]
    if kind == "reset_found_user":
        name = _person(rng)
        account = _account(name, rng)
        user = rng.choice(RESET_BY_NAME).format(name=name)
        messages = _turns(user, call("lookup_user", name=name), account)
        return {"messages": messages}, [call("reset_password", username=account["username"])]
    if kind == "report_result":
        if rng.random() < 0.5:
            text, ticket = _problem(rng)
            number = f"IT-{rng.randrange(1000, 10000)}"
            messages = _turns(text, ticket, {"ticket": number, "status": "open"})
        else:
            name = _person(rng)
            user = username(name)
            asked = rng.choice(RESET).format(username=user)
            result = {"username": user, "status": "reset", "email_sent": True}
            messages = _turns(asked, call("reset_password", username=user), result)
        return {"messages": messages}, []
    name = _person(rng)
    messages = _turns(
        rng.choice(LOOKUP).format(name=name), call("lookup_user", name=name), _account(name, rng)
    )
    text, ticket = _problem(rng)
    messages.append({"role": "user", "content": rng.choice(THANKS_AND) + text})
    return {"messages": messages}, [ticket]


SUITES: dict[str, tuple[str, Callable[[random.Random], tuple[dict[str, Any], Any]]]] = {
    "desk_requests": ("req", request_case),
    "follow_ups": ("conv", follow_up_case),
}
SIZES = {"desk_requests": (160, 40), "follow_ups": (100, 30)}
"""Train and holdout cases per suite: 330 cases, 70 of them held out."""


def generate(suite: str, train: int, holdout: int, holdout_share: float) -> list[dict[str, Any]]:
    prefix, make = SUITES[suite]
    rng = random.Random(f"{SEED}:{suite}")
    cases, sides = [], {"train": 0, "holdout": 0}
    seen: set[str] = set()
    number = 0
    while sides["train"] < train or sides["holdout"] < holdout:
        fields, reference = make(rng)
        text = json.dumps(fields, sort_keys=True)
        if text in seen:
            continue
        seen.add(text)
        number += 1
        case_id = f"{prefix}-{number:03d}"
        side = split_of(f"{suite}::{case_id}", holdout_share)
        if sides[side] >= (train if side == "train" else holdout):
            continue  # that side is full: skip the id, the next one may fall on the other
        sides[side] += 1
        cases.append({"id": case_id, **fields, "reference": reference})
    return cases


# --- the check -------------------------------------------------------------------------------


def _said_ticket(text: str) -> dict[str, Any] | None:
    """The ticket a text asks for, read from the problem and urgency phrases it contains."""
    categories = {c for c, problems in PROBLEMS.items() for p in problems if p in text}
    priorities = {p for p, cues in URGENCY.items() for cue in cues if cue in text}
    if not categories and not priorities:
        return None
    if len(categories) != 1 or len(priorities) != 1:
        raise ValueError(f"{text!r} is ambiguous: {categories}, {priorities}")
    return call("open_ticket", category=categories.pop(), priority=priorities.pop())


def _check_case(case: dict[str, Any], tools: dict[str, dict[str, Any]]) -> None:
    from distill_shapes.tools import schema_error

    for expected in case["reference"]:
        if expected["name"] not in tools:
            raise ValueError(f"calls {expected['name']!r}, which is not a tool")
        error = schema_error(expected["arguments"], tools[expected["name"]])
        if error is not None:
            raise ValueError(f"{expected['name']} arguments: {error}")
    messages = case.get("messages") or [{"role": "user", "content": case["vars"]["request"]}]
    last = messages[-1]
    if last["role"] == "user":
        ticket = _said_ticket(last["content"])
        tickets = [c for c in case["reference"] if c["name"] == "open_ticket"]
        if tickets != ([ticket] if ticket else []):
            raise ValueError(f"the words say {ticket}, the reference {tickets}")
        return
    result = json.loads(last["content"])
    said = " ".join(m.get("content") or "" for m in messages if m["role"] == "user")
    for expected in case["reference"]:
        wanted = expected["arguments"]["username"]
        if wanted != result.get("username") or wanted in said:
            raise ValueError(f"{wanted!r} is not (only) in the tool result")


def check(suite: str, cases: list[dict[str, Any]]) -> None:
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{suite}: duplicate case ids")
    specs = yaml.safe_load((EVALS / "tools.yaml").read_text(encoding="utf-8"))
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in specs}
    for case in cases:
        try:
            _check_case(case, tools)
        except ValueError as exc:
            raise SystemExit(f"{suite} {case['id']}: {exc}; fix generate_cases.py") from None


def path_of(suite: str) -> Path:
    return EVALS / f"{suite}.cases.jsonl"


def lines(cases: list[dict[str, Any]]) -> Iterator[str]:
    for case in cases:
        yield json.dumps(case, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fewer cases, to tune prompts")
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
            train, holdout = (max(1, round(n * args.scale)) for n in SIZES[suite])
            cases = generate(suite, train, holdout, args.holdout_share)
        check(suite, cases)
        if not args.check:
            path_of(suite).write_text("\n".join(lines(cases)) + "\n", encoding="utf-8")
        held = sum(split_of(f"{suite}::{c['id']}", args.holdout_share) == "holdout" for c in cases)
        print(f"{suite}: {len(cases)} cases ({len(cases) - held} train, {held} holdout), checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
