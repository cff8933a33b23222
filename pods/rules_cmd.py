"""`pod rules ...` (placeholder until the rule engine lands)."""


def register(sub):
    p = sub.add_parser("rules", help="check and explain pod policies")
    p.set_defaults(func=lambda args: 2)
