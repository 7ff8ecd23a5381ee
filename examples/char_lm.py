"""Character-level language model on Shakespeare with fusedrnn LSTM, GRU and LN-LSTM.

Embedding -> multi-layer fusedrnn RNN (dropout between layers) -> dropout -> linear
softmax over characters. Truncated BPTT: the text is cut into --batch-size parallel
streams, read --bptt characters at a time, and the recurrent state is carried from one
batch to the next with its graph cut (detached). The last --val-fraction of the text is
the validation set, scored in bits per character (bpc) with the state carried over the
whole validation stream. After training, each model writes a sample from --prompt with
--temperature and --top-k.

Data: --data PATH (any plain-text file); default: examples/data/shakespeare_excerpt.txt,
the complete text of Macbeth (103 KB, public domain) that ships with the examples.

Cells (--cells, comma list): lstm, gru, ln_lstm (layer-normalized LSTM), ln_gru, and any
Greff et al. variant as lstm:<variant> (lstm:peephole, lstm:cifg, lstm:fgr, ...).

Expected result (measured, see examples/results/README.md; shared 2-core CPU): the
default run (2 layers x 128, 8 epochs over Macbeth, seed 1) reaches validation bpc of
LSTM 2.59, GRU 2.39, LN-LSTM 2.33 -- it learns words, names and line structure, not
Shakespeare; more epochs or the complete works (--data) go further.
Outputs in --out: metrics.json, loss.png, samples.txt and a checkpoint per cell.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

if importlib.util.find_spec("fusedrnn") is None:  # running from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import fusedrnn
from fusedrnn.spec import LSTM_VARIANTS, VARIANT_ALIASES
from _util import (EXAMPLES_DIR, bits, detach_state, environment, init_recurrent, plot_curves, progress,
                   require_extras, set_seed, write_json)

DEFAULT_TEXT = EXAMPLES_DIR / "data" / "shakespeare_excerpt.txt"
NAMED_CELLS = {
    "lstm": (fusedrnn.LSTM, {}),
    "gru": (fusedrnn.GRU, {}),
    "ln_lstm": (fusedrnn.LSTM, {"norm": "layer"}),
    "ln_gru": (fusedrnn.GRU, {"norm": "layer"}),
}


def cell_constructor(cell: str):
    """(module class, keyword options) of a cell name: a NAMED_CELLS key or lstm:<variant>."""
    if cell in NAMED_CELLS:
        return NAMED_CELLS[cell]
    if cell.startswith("lstm:"):
        variant = cell.split(":", 1)[1]
        if VARIANT_ALIASES.get(variant, variant) in LSTM_VARIANTS:
            return fusedrnn.LSTM, {"variant": variant}
    raise ValueError(f"unknown cell {cell!r}: use one of {', '.join(NAMED_CELLS)} or lstm:<variant> with "
                     f"variant in {', '.join(LSTM_VARIANTS + tuple(VARIANT_ALIASES))}")


# ----------------------------------------------------------------------------- data


class Corpus:
    """Character vocabulary, and the text as train / validation index tensors."""

    def __init__(self, text: str, val_fraction: float = 0.1):
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.index[c] for c in text], dtype=torch.long)
        n_val = max(int(len(ids) * val_fraction), 2)
        self.train, self.val = ids[:-n_val], ids[-n_val:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        unknown = sorted(set(s) - set(self.index))
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the training text's vocabulary")
        return torch.tensor([self.index[c] for c in s], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def load_text(path) -> str:
    path = Path(path)
    if not path.exists():
        sys.exit(f"char_lm: --data {path} does not exist")
    return path.read_text(encoding="utf-8", errors="replace")


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] -> [N // B, B]: column b is the b-th contiguous stream of the text."""
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(f"text of {ids.numel()} characters is too short for {batch_size} streams")
    return ids[:n * batch_size].view(batch_size, n).t().contiguous()


def bptt_chunks(streams: torch.Tensor, bptt: int):
    """(x [T, B], y [T, B]) windows over the streams, y shifted by one character."""
    for i in range(0, streams.shape[0] - 1, bptt):
        T = min(bptt, streams.shape[0] - 1 - i)
        yield streams[i:i + T], streams[i + 1:i + 1 + T]


# ----------------------------------------------------------------------------- model


class CharLM(nn.Module):
    def __init__(self, cell: str, vocab: int, embed: int = 32, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.2, backend: str = "auto"):
        super().__init__()
        cls, kw = cell_constructor(cell)
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = cls(embed, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                       backend=backend, **kw)
        init_recurrent(self.rnn, "orthogonal", forget_bias=1.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        """x: [T, B] character ids; state: whatever the RNN returned last (tensor or tuple)."""
        y, state = self.rnn(self.embed(x), state)
        return self.head(self.drop(y)), state


def evaluate_bpc(model: CharLM, ids: torch.Tensor, batch_size: int = 8, bptt: int = 256) -> float:
    """Validation bits per character, the state carried across the whole stream."""
    model.eval()
    streams = batchify(ids, min(batch_size, max(ids.numel() // 2, 1)))
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for x, y in bptt_chunks(streams, bptt):
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    model.train()
    return bits(total / count)


@torch.no_grad()
def generate(model: CharLM, corpus: Corpus, prompt: str, length: int = 300, temperature: float = 0.8,
             top_k: int = 0, seed: int = 0) -> str:
    """Continue `prompt` by sampling `length` characters (temperature, optional top-k)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = corpus.encode(prompt)
    logits, state = model(ids.unsqueeze(1))
    last = logits[-1, 0]
    out = []
    for _ in range(length):
        scores = last / temperature
        if top_k > 0:
            kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        nxt = torch.multinomial(torch.softmax(scores.double(), 0), 1, generator=gen)
        out.append(int(nxt))
        logits, state = model(nxt.view(1, 1), state)
        last = logits[-1, 0]
    model.train()
    return prompt + corpus.decode(out)


def train_cell(cfg, cell: str, corpus: Corpus, backend: str = "auto", bar: bool = True):
    """Train one cell from cfg.seed with truncated BPTT; returns (model, history dict).

    history: epoch, train_bpc, val_bpc, epoch_time_s (training only), wall_s (cumulative),
    step_loss (nats, every batch), last_backend.
    """
    dtype = getattr(torch, cfg.dtype)
    set_seed(cfg.seed)
    model = CharLM(cell, corpus.vocab_size, cfg.embed, cfg.hidden, cfg.layers, cfg.dropout, backend).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    streams = batchify(corpus.train, cfg.batch_size)
    hist = {"epoch": [], "train_bpc": [], "val_bpc": [], "epoch_time_s": [], "wall_s": [], "step_loss": []}
    wall = 0.0
    for epoch in range(1, cfg.epochs + 1):
        chunks = list(bptt_chunks(streams, cfg.bptt))[:cfg.max_batches or None]
        state, total, count = None, 0.0, 0
        t0 = time.perf_counter()
        it = progress(chunks, desc=f"{cell} epoch {epoch}", disable=not bar)
        for x, y in it:
            logits, state = model(x, state)
            state = detach_state(state)  # truncated BPTT: carry the values, not the graph
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            total += loss.item() * y.numel()
            count += y.numel()
            hist["step_loss"].append(loss.item())
            it.set_postfix(bpc=f"{bits(loss.item()):.3f}")
        dt = time.perf_counter() - t0
        wall += dt
        val = evaluate_bpc(model, corpus.val)
        for k, v in (("epoch", epoch), ("train_bpc", bits(total / count)), ("val_bpc", val),
                     ("epoch_time_s", dt), ("wall_s", wall)):
            hist[k].append(v)
        print(f"{cell:14s} epoch {epoch:3d}  train bpc {bits(total / count):.3f}  val bpc {val:.3f}  "
              f"{dt:6.1f} s/epoch  (ran: {model.rnn.last_backend})", flush=True)
    hist["last_backend"] = model.rnn.last_backend
    return model, hist


def save_checkpoint(path: Path, model: CharLM, corpus: Corpus, cell: str, cfg, hist: dict) -> None:
    torch.save({"model": model.state_dict(), "cell": cell, "chars": corpus.chars,
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
                "val_bpc": hist["val_bpc"][-1]}, path)


def add_training_args(p: argparse.ArgumentParser, *, epochs: int, hidden: int, layers: int) -> None:
    """The model / optimization options, shared with variant_study.py."""
    p.add_argument("--data", type=Path, default=DEFAULT_TEXT,
                   help="plain-text training file (default: the Macbeth excerpt shipped in examples/data)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the text for validation")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--embed", type=int, default=32, help="character embedding size")
    p.add_argument("--dropout", type=float, default=0.2, help="between layers and before the softmax")
    p.add_argument("--batch-size", type=int, default=16, help="parallel text streams")
    p.add_argument("--bptt", type=int, default=64, help="truncated-BPTT window (characters)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--backend", default="auto", choices=fusedrnn.modules.BACKENDS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=0, help="cap batches per epoch (0: all; for smoke tests)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-bar", action="store_true", help="no progress bar")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_args(p, epochs=8, hidden=128, layers=2)
    p.add_argument("--cells", default="lstm,gru,ln_lstm", help="comma list of cells (see above)")
    p.add_argument("--prompt", default="MACBETH.\n", help="text to continue after training")
    p.add_argument("--gen-chars", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=10, help="sample among the k likeliest characters (0: all)")
    p.add_argument("--out", type=Path, default=Path("runs/char_lm"), help="output folder")
    args = p.parse_args(argv)
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in args.cells:
        try:
            cell_constructor(c)
        except ValueError as e:
            p.error(f"--cells: {e}")
    return args


def main(argv=None):
    require_extras()
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = Corpus(load_text(cfg.data), cfg.val_fraction)
    print(f"{cfg.data}: {len(corpus.train)} train / {len(corpus.val)} validation characters, "
          f"vocabulary {corpus.vocab_size}; cells {cfg.cells}, backend {cfg.backend}", flush=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    runs, samples = {}, {}
    for cell in cfg.cells:
        model, hist = train_cell(cfg, cell, corpus, cfg.backend, bar=not cfg.no_bar)
        runs[cell] = hist
        save_checkpoint(cfg.out / f"checkpoint_{cell.replace(':', '_')}.pt", model, corpus, cell, cfg, hist)
        samples[cell] = generate(model, corpus, cfg.prompt, cfg.gen_chars, cfg.temperature, cfg.top_k, cfg.seed)
        print(f"--- sample ({cell}, temperature {cfg.temperature}, top-k {cfg.top_k}) ---\n{samples[cell]}\n---")
    rows = [{"cell": c, "ran": h["last_backend"], "epochs": len(h["epoch"]), "val_bpc": h["val_bpc"][-1],
             "best_val_bpc": min(h["val_bpc"]), "median_epoch_s": sorted(h["epoch_time_s"])[len(h["epoch"]) // 2]}
            for c, h in runs.items()]
    table = "\n".join(["| cell | backend (ran) | epochs | val bpc (final) | best | s / epoch (median) |",
                       "|---|---|---|---|---|---|"]
                      + [f"| {r['cell']} | {cfg.backend} ({r['ran']}) | {r['epochs']} | {r['val_bpc']:.3f} | "
                         f"{r['best_val_bpc']:.3f} | {r['median_epoch_s']:.2f} |" for r in rows])
    print(table)
    (cfg.out / "table.md").write_text(table + "\n")
    (cfg.out / "samples.txt").write_text("".join(
        f"=== {c} (temperature {cfg.temperature}, top-k {cfg.top_k}) ===\n{s}\n\n" for c, s in samples.items()))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
    write_json(cfg.out / "metrics.json", {"task": "character LM", "config": config, "environment": environment(),
                                          "summary": rows, "samples": samples, "runs": runs})
    plot_curves(cfg.out / "loss.png", {f"{c} [{h['last_backend']}]": h for c, h in runs.items()},
                [("epoch", "val_bpc", "epoch", "validation bits / char"),
                 ("wall_s", "val_bpc", "training wall time (s)", "validation bits / char"),
                 ("epoch", "train_bpc", "epoch", "training bits / char")],
                f"char LM on {cfg.data.name}: {cfg.layers} x {cfg.hidden}, dropout {cfg.dropout}, "
                f"bptt {cfg.bptt}, batch {cfg.batch_size}")
    print(f"wrote {cfg.out}/metrics.json, loss.png, samples.txt, table.md, checkpoint_*.pt")
    return runs


if __name__ == "__main__":
    main()
