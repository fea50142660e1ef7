"""Train the article's first network (2 inputs -> 3 ReLU units -> 1 sigmoid output) with SGD.

The data are two moons pulled apart by ``--gap`` (see ``make_two_moons``). With the article's
3 hidden units, gradient descent settles on a nearly straight boundary, which is enough once
the moons are apart; the classic interleaved moons (``--gap 0``) need more units, e.g.
``--hidden 32 --steps 3000``. Three ReLU units are few: about one seed in a couple of hundred
starts with units that never fire on any point, and those die the rest of the way in training
(the loss stays at log 2 and the accuracy at 50%); another seed then does fine.

    python examples/simple_nn.py [--steps 1000] [--seed 0] [--hidden 3] [--gap 0.3] [--lr 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np

from numpyllm.models.simple_nn import SimpleNN, make_two_moons
from numpyllm.optim import SGD


def accuracy(model: SimpleNN, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x) == y))


def main(argv: list[str] | None = None) -> float:
    """Train, print progress and accuracies; returns the held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="gradient steps (full batch)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the weights")
    parser.add_argument("--hidden", type=int, default=3, help="hidden ReLU units")
    parser.add_argument("--gap", type=float, default=0.3, help="vertical gap between the moons")
    parser.add_argument("--noise", type=float, default=0.1, help="std of the points' noise")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate")
    parser.add_argument("--n", type=int, default=400, help="points per split (train, test)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_two_moons(args.n, args.noise, rng, gap=args.gap)
    x_test, y_test = make_two_moons(args.n, args.noise, rng, gap=args.gap)
    model = SimpleNN(in_features=2, hidden=args.hidden, rng=rng)
    print(model)

    optimizer = SGD(model.parameters(), lr=args.lr)
    log_every = max(1, args.steps // 10)
    for step in range(1, args.steps + 1):
        out = model(x_train, labels=y_train)  # the whole training set is one batch
        optimizer.zero_grad()
        model.backward()
        optimizer.step()
        if step == 1 or step % log_every == 0:
            print(f"step {step:5d}  loss {out.loss:.4f}")

    train_acc, test_acc = accuracy(model, x_train, y_train), accuracy(model, x_test, y_test)
    print(f"train accuracy {train_acc:.3f}   held-out accuracy {test_acc:.3f}")
    return test_acc


if __name__ == "__main__":
    main()
