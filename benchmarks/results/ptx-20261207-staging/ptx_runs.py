"""Global-to-shared copy loops of the persistent kernels in a PTX file (built with -lineinfo), and
how many loads each issues before its first store.

For every persistent kernel entry, each innermost loop (a label and the backward branch to it) that
loads from global and stores to shared memory is listed as SOURCE:LINE loads-before-first-store/loads,
the line being that of its first shared-memory store. "1/1" copies one element per iteration: the
store needs the loaded register, so with in-order issue each iteration waits out one global-memory
round trip before the next load is issued.
Usage: python ptx_runs.py FILE.ptx
"""
import re
import sys

BRANCH = re.compile(r"bra(?:\.uni)?\s+(\$L__\w+);")
text = open(sys.argv[1]).read()
files = dict(re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', text, flags=re.M))
for body in re.split(r"^\.visible \.entry ", text, flags=re.M)[1:]:
    name = body.split("(", 1)[0]
    if "persistent_lstm" not in name:
        continue
    lines = [s.strip() for s in body.splitlines()]
    labels = {s[:-1]: i for i, s in enumerate(lines) if s.startswith("$L__") and s.endswith(":")}
    back = [(labels[m.group(1)], j) for j, s in enumerate(lines)
            if (m := BRANCH.search(s)) and labels.get(m.group(1), j) < j]
    found = []
    for start, end in back:
        if any(start <= s2 and e2 < end for s2, e2 in back if (s2, e2) != (start, end)):
            continue  # not innermost
        loads = [k for k in range(start, end) if lines[k].startswith("ld.global")]
        stores = [k for k in range(start, end) if lines[k].startswith("st.shared")]
        if not loads or not stores:
            continue
        loc = next((m for k in range(stores[0], start - 1, -1) if (m := re.match(r"\.loc\s+(\d+)\s+(\d+)", lines[k]))),
                   None)
        where = f"{files.get(loc.group(1), '?').rsplit('/', 1)[-1]}:{loc.group(2)}" if loc else "?"
        found.append(f"{where} {sum(k < stores[0] for k in loads)}/{len(loads)}")
    print(f"{name}:\n  " + "\n  ".join(found))
