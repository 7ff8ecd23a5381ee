"""Copy loops (global -> shared) of the persistent kernels in their SASS, and how many loads each
issues before its first store.

Input: `nvdisasm -gi -c` of a cubin built with -lineinfo. For each persistent kernel, each
innermost loop (a branch back to an earlier label) with LDG and STS is listed as
`file:line loads/LDG`: the kernel-source line its first STS comes from (the outermost "inlined
at"), and the LDG issued before that STS out of all in the loop. With in-order issue an STS waits
for its register, so a 1/1 loop has one load in flight per thread.
With --fma it lists instead the innermost loops with at least 8 FFMA (the recurrent product's
k loop): `file:line instructions FFMA LDS`.
Usage: python sass_runs.py [--fma] FILE.dis
"""
import re
import sys

fma = "--fma" in sys.argv[1:]
funcs, ins, labels, where = {}, None, None, ""
for line in open(sys.argv[-1]):
    m = re.match(r"\.text\.(\S+):", line)
    if m:
        ins, labels = [], {}
        funcs[m.group(1)] = (ins, labels)
        continue
    if ins is None:
        continue
    m = re.match(r"(\.L_x_\d+):", line)
    if m:
        labels[m.group(1)] = len(ins)
        continue
    m = re.match(r'\s*//## File "([^"]+)", line (\d+)(.*)', line)
    if m:
        chain = [(m.group(1), m.group(2))] + re.findall(r'inlined at "([^"]+)", line (\d+)', m.group(3))
        where = f"{chain[-1][0].rsplit('/', 1)[-1]}:{chain[-1][1]}"
        continue
    m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
    if m:
        ins.append((m.group(1), where))

for name, (ins, labels) in funcs.items():
    if "persistent_lstm" not in name:
        continue
    loops = []
    for i, (t, _) in enumerate(ins):
        m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", t)
        if m and labels.get(m.group(1), i + 1) <= i:
            loops.append((labels[m.group(1)], i))
    print(f"{name}:")
    for s, e in loops:
        if any(s <= s2 and e2 < e for s2, e2 in loops if (s2, e2) != (s, e)):
            continue  # not innermost
        if fma:
            ffma = sum("FFMA" in ins[k][0] for k in range(s, e + 1))
            lds = sum(bool(re.match(r"(@!?U?P\w+\s+)?LDS", ins[k][0])) for k in range(s, e + 1))
            if ffma >= 8:
                print(f"  {ins[s][1]} {e + 1 - s} instructions, {ffma} FFMA, {lds} LDS")
            continue
        ldg = [k for k in range(s, e + 1) if re.match(r"(@!?U?P\w+\s+)?LDG", ins[k][0])]
        sts = [k for k in range(s, e + 1) if re.match(r"(@!?U?P\w+\s+)?STS", ins[k][0])]
        if ldg and sts:
            print(f"  {ins[sts[0]][1]} {sum(k < sts[0] for k in ldg)}/{len(ldg)}")
