"""The embedded default training set: generated function-calling tasks in the xLAM layout.

Tools from many domains; single calls, a choice among several tools, parallel calls of one tool,
parallel calls of several tools, and irrelevance (no tool fits); each query states the values the
answer must extract. Deterministic by seed. Written from scratch: nothing comes from BFCL.
Also the deliberate corruptions the stage-2 tests feed in, keyed by the reason stage 2 must give.
"""

import json
import random

CITIES = [
    "Lisbon", "Osaka", "Nairobi", "Toronto", "Valparaiso", "Tbilisi", "Perth", "Bergen", "Accra",
    "Cusco", "Hanoi", "Tallinn", "Winnipeg", "Porto", "Chennai", "Kraków", "Medellín", "Izmir",
    "Dakar", "Hobart", "Sapporo", "Tromsø", "Marrakesh", "Oaxaca", "Ljubljana", "Bilbao",
]  # fmt: skip


def date(rng: random.Random) -> str:
    return f"{rng.randint(2025, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def between(low: float, high: float, digits: int | None = None):
    """Values drawn uniformly: ints, or floats rounded to `digits`."""
    if digits is None:
        return lambda rng: rng.randint(low, high)
    return lambda rng: round(rng.uniform(low, high), digits)


def clock(rng: random.Random) -> str:
    return f"{rng.randint(7, 22):02d}:{rng.choice(['00', '15', '30', '45'])}"


PEOPLE = ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana"]
# name: (description, {param: (xLAM type, values, phrase)}, templates). Values: a list or a
# function of the rng; phrase: None, "enum" (the values are the declared enum) or a dict mapping
# a bool to words. A "?" after the type marks an optional parameter.
TOOLS = {
    "get_current_weather": (
        "Current weather conditions for a city.",
        {"city": ("str", CITIES, None), "unit": ("str?", ["celsius", "fahrenheit"], "enum")},
        [
            "What's the weather like in {city} right now, in {unit}?",
            "Tell me the current weather in {city}.",
            "How hot is it in {city} at the moment? Use {unit}.",
        ],
    ),
    "search_flights": (
        "Search one-way flights between two cities on a date.",
        {
            "origin": ("str", CITIES, None),
            "destination": ("str", CITIES, None),
            "date": ("str", date, None),
            "passengers": ("int", between(1, 9), None),
        },
        [
            "Find flights from {origin} to {destination} on {date} for {passengers} people.",
            "I need {passengers} seats flying {origin} to {destination} on {date}.",
        ],
    ),
    "convert_currency": (
        "Convert an amount of money between currencies.",
        {
            "amount": ("float", between(5, 5000, 2), None),
            "from_currency": ("str", ["EUR", "JPY", "KES", "CAD"], None),
            "to_currency": ("str", ["USD", "GBP", "CHF", "AUD"], None),
        },
        [
            "How much is {amount} {from_currency} in {to_currency}?",
            "Convert {amount} {from_currency} to {to_currency}, please.",
        ],
    ),
    "get_stock_quote": (
        "Latest quote for a stock ticker.",
        {"ticker": ("str", ["NVDA", "SAP", "TM", "SHOP", "ASML"], None)},
        ["What's {ticker} trading at?", "Give me the latest quote for {ticker}."],
    ),
    "find_recipes": (
        "Recipes using an ingredient within a time limit.",
        {
            "ingredient": ("str", ["lentils", "salmon", "tofu", "pumpkin", "chickpeas"], None),
            "max_minutes": ("int", between(10, 90), None),
            "vegetarian": ("bool?", [True, False], {True: "vegetarian", False: "non-vegetarian"}),
        },
        [
            "Suggest {vegetarian} recipes with {ingredient} taking at most {max_minutes} minutes.",
            "I have {ingredient} and {max_minutes} minutes; any {vegetarian} recipes?",
            "Recipes with {ingredient}, under {max_minutes} minutes.",
        ],
    ),
    "create_event": (
        "Add an event to the calendar.",
        {
            "title": ("str", ["dentist", "team sync", "piano lesson", "book club"], None),
            "date": ("str", date, None),
            "duration_minutes": ("int?", between(15, 180), None),
        },
        [
            "Put {title} on my calendar for {date}, {duration_minutes} minutes long.",
            "Schedule a {title} on {date}.",
        ],
    ),
    "send_email": (
        "Send an email.",
        {
            "to": ("str", [p.lower() + "@example.org" for p in PEOPLE], None),
            "subject": ("str", ["Invoice", "Trip plans", "Welcome", "Minutes"], None),
        },
        ["Email {to} with the subject {subject}.", "Send a message to {to} titled '{subject}'."],
    ),
    "get_directions": (
        "Route between two places.",
        {
            "origin": ("str", CITIES, None),
            "destination": ("str", CITIES, None),
            "mode": ("str?", ["driving", "walking", "transit"], "enum"),
        },
        [
            "How do I get from {origin} to {destination} by {mode}?",
            "Directions from {origin} to {destination}, {mode}.",
            "Route me from {origin} to {destination}.",
        ],
    ),
    "translate_text": (
        "Translate text into a language.",
        {
            "text": ("str", ["good morning", "where is the station", "thank you very much"], None),
            "target_language": ("str", ["Swahili", "Portuguese", "Korean", "Finnish"], None),
        },
        [
            "Translate '{text}' into {target_language}.",
            "How do you say '{text}' in {target_language}?",
        ],
    ),
    "calculate_bmi": (
        "Body-mass index from weight and height.",
        {
            "weight_kg": ("float", between(45, 130, 1), None),
            "height_m": ("float", between(1.45, 2.05, 2), None),
        },
        [
            "My weight is {weight_kg} kg and I'm {height_m} m tall: what's my BMI?",
            "Compute the BMI for {weight_kg} kg at {height_m} m.",
        ],
    ),
    "book_table": (
        "Reserve a restaurant table.",
        {
            "restaurant": ("str", ["Casa Azul", "Blue Ginkgo", "Nyama Choma House"], None),
            "party_size": ("int", between(1, 12), None),
            "time": ("str", clock, None),
        },
        [
            "Book {restaurant} for {party_size} at {time}.",
            "Table for {party_size} at {restaurant}, {time}.",
        ],
    ),
    "set_thermostat": (
        "Set a room's target temperature.",
        {
            "room": ("str", ["kitchen", "bedroom", "office"], None),
            "temperature": ("float", between(16, 26, 1), None),
        },
        [
            "Set the {room} to {temperature} degrees.",
            "Make the {room} {temperature} degrees, please.",
        ],
    ),
    "search_jobs": (
        "Search job listings.",
        {
            "title": ("str", ["data engineer", "nurse", "welder", "product designer"], None),
            "location": ("str", CITIES, None),
            "remote": ("bool", [True, False], {True: "remote", False: "on-site"}),
        },
        [
            "Look for {remote} {title} jobs in {location}.",
            "Any {remote} openings for a {title} in {location}?",
        ],
    ),
    "log_workout": (
        "Record a workout.",
        {
            "activity": ("str", ["running", "cycling", "swimming", "rowing"], "enum"),
            "minutes": ("int", between(10, 120), None),
        },
        [
            "Log {minutes} minutes of {activity}.",
            "I did {activity} for {minutes} minutes, record it.",
        ],
    ),
    "track_package": (
        "Status of a parcel by tracking number.",
        {"tracking_id": ("str", ["1Z999AA10123456784", "LX482913375DE", "9400111899223344"], None)},
        ["Where is my parcel {tracking_id}?", "Track package {tracking_id}."],
    ),
    "get_crypto_price": (
        "Price of a cryptocurrency in a fiat currency.",
        {
            "coin": ("str", ["bitcoin", "ether", "solana"], None),
            "currency": ("str?", ["USD", "EUR"], None),
        },
        ["What's the price of {coin} in {currency}?", "How much is one {coin}?"],
    ),
}
JOINERS = [" Also, ", " And ", " Then ", " Additionally, "]
OPENERS = ["", "", "Hi! ", "Quick question: ", "Please help. "]


def xlam_tool(name: str) -> dict:
    """The tool in xLAM's layout: {name, description, parameters: {p: {type, description}}}."""
    description, params, _ = TOOLS[name]
    out = {}
    for param, (kind, values, phrase) in params.items():
        optional = kind.endswith("?")
        out[param] = {"type": kind.rstrip("?") + (", optional" if optional else ""),
                      "description": f"The {param.replace('_', ' ')}."}  # fmt: skip
        if phrase == "enum":
            out[param]["enum"] = values
    return {"name": name, "description": description, "parameters": out}


def one_call(name: str, rng: random.Random) -> tuple[str, dict]:
    """A phrase asking for one call of `name`, and the call's arguments (taken from the phrase):
    an optional parameter is passed exactly when the chosen template mentions it."""
    _, params, templates = TOOLS[name]
    template = rng.choice(templates)
    args, words = {}, {}
    for param, (kind, values, phrase) in params.items():
        if "{" + param + "}" not in template:
            if not kind.endswith("?"):
                raise ValueError(f"{name}: template {template!r} lacks required {param}")
            continue
        args[param] = values(rng) if callable(values) else rng.choice(values)
        words[param] = phrase[args[param]] if isinstance(phrase, dict) else str(args[param])
    return template.format(**words), args


def task(
    kind: str, rng: random.Random, distractors: int = 3, max_calls: int = 3
) -> tuple[str, list[str], list[dict]]:
    """(query, tool names offered, answer calls) of one task of `kind`: `distractors` other
    tools are offered beside the asked ones (where the kind offers any), and a parallel kind
    asks for 2 to `max_calls` calls."""
    names = sorted(TOOLS)
    target = rng.choice(names)
    others = rng.sample([n for n in names if n != target], distractors)
    if kind == "irrelevance":
        query, _ = one_call(target, rng)
        return query, others, []
    if kind in ("single", "multiple"):
        chosen = [target]
    elif kind == "parallel":
        chosen = [target] * rng.randint(2, max_calls)
    else:  # parallel_multiple
        chosen = [target, *others[: rng.randint(1, max(1, min(max_calls - 1, distractors)))]]
    parts, calls = [], []
    for name in chosen:
        text, args = one_call(name, rng)
        parts.append(text)
        calls.append({"name": name, "arguments": args})
    query = parts[0] + "".join(rng.choice(JOINERS) + p[0].lower() + p[1:] for p in parts[1:])
    offered = (
        sorted(set(chosen)) if kind in ("single", "parallel") else sorted(set(chosen + others))
    )
    return rng.choice(OPENERS) + query, offered, calls


KINDS = {
    "single": 0.25,
    "multiple": 0.25,
    "parallel": 0.15,
    "parallel_multiple": 0.15,
    "irrelevance": 0.2,
}


def generate(n: int, seed: int = 0, distractors: int = 3, max_calls: int = 3) -> list[dict]:
    """n tasks in the xLAM layout (query, tools and answers as JSON strings), ids 0..n-1; the
    defaults give the full set, fewer distractors and calls give shorter, easier tasks."""
    if not 1 <= distractors < len(TOOLS) or max_calls < 2:
        raise ValueError(f"distractors: 1 to {len(TOOLS) - 1}, max_calls: ≥ 2; got "
                         f"{distractors}, {max_calls}")  # fmt: skip
    rng = random.Random(seed)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=n)
    out = []
    for i, kind in enumerate(kinds):
        query, offered, calls = task(kind, rng, distractors, max_calls)
        rng.shuffle(offered)
        out.append({"id": i, "query": query, "tools": json.dumps([xlam_tool(t) for t in offered]),
                    "answers": json.dumps(calls), "kind": kind})  # fmt: skip
    return out


BREAK_REASONS = (
    "unknown_function",
    "missing_required",
    "wrong_type",
    "invented_param",
    "not_in_enum",
    "answer_unparseable",
)


def _break(item: dict, reason: str, rng: random.Random) -> dict | None:
    """`item` corrupted so that stage 2 must reject it with `reason`; None if it cannot be."""
    calls, tools = json.loads(item["answers"]), json.loads(item["tools"])
    if not calls:
        return None
    call = rng.choice(calls)
    params = next(t["parameters"] for t in tools if t["name"] == call["name"])
    required = [p for p in call["arguments"] if "optional" not in params[p]["type"]]
    if reason == "unknown_function":
        call["name"] += "_x"
    elif reason == "missing_required" and required:
        del call["arguments"][rng.choice(required)]
    elif reason == "wrong_type":
        param = rng.choice(list(call["arguments"]))
        value = call["arguments"][param]
        call["arguments"][param] = [value] if isinstance(value, str) else str(value)
    elif reason == "invented_param":
        call["arguments"]["priority_level"] = "high"
    elif reason == "not_in_enum" and (
        enums := [p for p in call["arguments"] if "enum" in params[p]]
    ):
        call["arguments"][rng.choice(enums)] = "sideways"
    elif reason == "answer_unparseable":
        return {**item, "answers": json.dumps(calls)[:-2], "broken": reason}
    else:
        return None
    return {**item, "answers": json.dumps(calls), "broken": reason}


def with_broken(items: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A copy of `items` where `fraction` of them are corrupted, each marked "broken": reason."""
    rng = random.Random(seed)
    out = list(items)
    target = int(len(items) * fraction)
    order = rng.sample(range(len(items)), len(items))
    broken = 0
    for i in order:
        if broken == target:
            break
        item = _break(dict(items[i]), BREAK_REASONS[broken % len(BREAK_REASONS)], rng)
        if item is not None:
            out[i], broken = item, broken + 1
    return out
