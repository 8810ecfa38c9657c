"""Reading the client's JSON reports for scripts/bench.sh and
scripts/bench-cluster.sh: one file per scenario, server (or setup) and round,
named `<scenario>-<server>-<round>.json` in the run's output directory."""

import json
import statistics


class Results:
    def __init__(self, out, rounds):
        self.out, self.rounds = out, rounds

    def _reports(self, name, who):
        for r in range(1, self.rounds + 1):
            try:
                with open(f"{self.out}/{name}-{who}-{r}.json") as f:
                    yield json.load(f)
            except (OSError, ValueError):
                pass  # a round that did not run or did not finish

    def vals(self, name, who, path):
        """The value at dotted `path` of every round that has it."""
        v = []
        for d in self._reports(name, who):
            try:
                for p in path.split("."):
                    d = d[p]
                v.append(float(d))
            except (KeyError, TypeError, ValueError):
                pass
        return v

    def med(self, name, who, path):
        v = self.vals(name, who, path)
        return statistics.median(v) if v else float("nan")

    def bad(self, name, who):
        """Lost, duplicated, misdelivered and unknown messages over all rounds."""
        n = 0
        for d in self._reports(name, who):
            m = d.get("messages") or {}
            n += sum(m.get(k, 0) for k in ("lost", "duplicated", "misdelivered", "unknown"))
        return n
