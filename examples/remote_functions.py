"""Run ordinary Python functions in sandboxes with ``@session.function()``.

    python examples/remote_functions.py

Each call starts its own sandbox, runs the function there and stops it again. The function
travels as source code (with the helpers and constants it uses); arguments and results
travel as JSON. A function that raises comes back as ``FunctionError`` with the remote
traceback.
"""

import math

from cwsandbox import FunctionError, SandboxDefaults, Session

SCALE = 10


def norm(values):
    return math.sqrt(sum(v * v for v in values))


with Session(SandboxDefaults(tags=["remote-functions-example"])) as session:

    @session.function()
    def scaled_norm(values, scale=SCALE):
        import platform

        return {"norm": norm(values) * scale, "python": platform.python_version()}

    @session.function()
    def fails(n):
        return 10 / n

    print(scaled_norm.remote([3, 4]).result()["norm"])
    print([r.result()["norm"] for r in scaled_norm.map([([1, 0],), ([0, 2], 1)])])
    try:
        fails.remote(0).result()
    except FunctionError as err:
        print(f"remote {err.exception_type}: {err.exception_message}")
