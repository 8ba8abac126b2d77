"""The verdicts of docs/rules.md, written by a person from the tables ``scripts/rules_doc.py`` puts
beside them (digits: 3 seeds x 2 networks, 20 epochs; MNIST-10k: 3 seeds x 1 network, 6 epochs
and 30 s; textures: 3 seeds x 1 network, 8 epochs; the runs of 2026-12-01 13:57-15:01 UTC).
"pt": percentage points of test accuracy, paired against the rule's arm, with the 95% interval."""

VERDICTS = {
    "R1": (
        "**Does not hold as stated; growth buys accuracy only on the hardest data.** x4 does not make "
        "every layer cost the same in measured time: the per-conv-layer spread after the stem (CV) "
        "is 0.65 / 0.31 / 0.26 with x4 on digits / MNIST-10k / textures, against 0.44 / 0.02 / 0.01 "
        "with x2 and 0.09 / 0.19 / 0.23 with constant width, because the time per filter grows with "
        "its input channels (x2, constant MACs per layer, is the balanced one where the maps halve). "
        "x4 was the most accurate on textures (x2 -3.8 pt [-6.9, -0.7], constant width -11.8 pt "
        "[-16.0, -7.6]), not on digits (x2 +0.7 pt, constant -1.6 pt, neither significant) or "
        "MNIST-10k (-0.0, -0.0 pt), at 1.5-2.8x the measured time: per measured millisecond the "
        "narrower networks win everywhere (test accuracy per ms x4 / x2 / constant: digits 2.7 / "
        "3.6 / 5.3, MNIST-10k 2.0 / 3.5 / 3.4, textures 1.8 / 2.7 / 2.6). No default changed: the "
        "search draws x2 (default) and x4."
    ),
    "R2": (
        "**Holds.** Where the rule picks 5x5 (28-32 px inputs, at most 2 stages), 3x3 lost 3.4 pt "
        "[0.6, 6.3] on MNIST-10k and 11.3 pt [7.6, 14.9] on textures, for 0.14-0.16 ms less. On 8x8 "
        "digits the rule gives 3x3 (the 3x3 arm is the same network) and 5x5 lost 1.0 pt (not "
        "significant) for +0.18 ms [0.07, 0.28] measured."
    ),
    "R3": (
        "**Not a free win.** Two stacked 3x3 against one 5x5: +0.5 pt on digits, -0.4 pt on "
        "MNIST-10k, -2.7 pt on textures, none significant; slower on the 28-32 px inputs (+0.11 ms on "
        "MNIST-10k, +0.08 ms on textures: a second full-resolution conv). Stacking stays off by "
        "default and in the search space."
    ),
    "R4": (
        "**Holds.** Stride-2 convolutions instead of pooling lost 1.7 pt [1.3, 2.1] on MNIST-10k and "
        "12.4 pt [9.0, 15.7] on textures (where they saved 0.2 ms), and 5.8 pt on digits (not "
        "significant, [-18.3, 6.7]: one draw trained badly)."
    ),
    "R5": (
        "**Leans to holding, not established.** Valid padding: -1.3 pt on MNIST-10k and -2.8 pt on "
        "textures, +0.5 pt on digits (1-stage networks only: valid 3x3 convs leave an 8x8 input too "
        "small for a second stage), none significant, 0.00-0.08 ms faster. Same padding stays the "
        "default: "
        "it keeps depth possible on small inputs."
    ),
    "R6": (
        "**Not established.** Halving head widths against equal widths: -0.3 pt on MNIST-10k and "
        "-0.7 pt on textures (not significant); on digits the equal arm averaged 16 pt lower because "
        "one draw with two wide dense layers failed to train, an interval of [-16, 49] pt that says "
        "nothing."
    ),
    "R7": (
        "**The textbook r = 1/n_in^2 fails; among the others it depends on the data.** Textbook "
        "init trained digits draws to chance (54% mean, -43 pt) and lost 15 pt on textures, but "
        "matched Kaiming on MNIST-10k's batch-normalised default network. LeCun and Glorot beat "
        "Kaiming on textures (+8.2 pt [6.8, 9.7], +5.8 pt [4.7, 6.9] at 8 epochs) and were level on "
        "digits (+1.8, +1.5 pt) and MNIST-10k (+0.5, +0.5 pt), all with batch norm; without it "
        "Kaiming won clearly on deep networks (docs/benchmarks.md, \"Init schemes\"). Kaiming stays "
        "the default; the search draws all three."
    ),
    "balance": (
        "**Balances time; accuracy per millisecond follows where accuracy holds.** Rebalancing "
        "brought the measured per-conv-layer spread down on digits (CV 0.56 to 0.06; 30 networks at "
        "batch 1: median 0.34 to 0.12, docs/benchmarks.md \"Compute balancing\") and the measured "
        "time by 8-17%. Accuracy held: +1.4 pt on digits, 0.0 pt [-0.3, 0.3] on MNIST-10k, -0.4 pt "
        "on textures, none significant; test accuracy per ms rose on MNIST-10k (2.95 to 3.31) and "
        "textures (2.53 to 2.71), fell slightly on digits (3.20 to 3.08, networks twice the MACs). "
        "The default network with x2 growth is already balanced (CV 0.02 on MNIST-10k, 0.04 on "
        "textures), so there is little to gain: it stays off by default (the search may draw it)."
    ),
    "lr": (
        "**Depends on the epochs.** With 20 epochs on digits 1e-3 was as good as any (3e-4 -0.3 pt, "
        "1e-2 +0.4 pt; 3e-3 trained one draw badly, -14 pt on average). Within 6 epochs on MNIST-10k "
        "3e-3 gained 0.8 pt [0.4, 1.1] and 3e-4 lost 1.7 pt [0.5, 2.8]; within 8 on textures 3e-3 and "
        "1e-2 gained 7.4 and 7.6 pt and 3e-4 lost 15 pt. 1e-3 stays the default start (it is never "
        "the one that fails); the search samples 1e-4 to 3e-2."
    ),
    "loss": (
        "**Does not hold here.** Squared error on the softmax trained as well as cross-entropy: "
        "0.0 pt on digits, -0.3 pt on MNIST-10k, -0.8 pt on textures, none significant. Cross-entropy "
        "stays the default (no reason to change, none to prefer MSE)."
    ),
    "reg": (
        "**Not established.** L2 1e-5 against none: +0.1, +0.2 and +0.6 pt; L2 1e-3 and L1 1e-5 "
        "within 0.3 pt of it; no difference is significant on these small networks with batch norm "
        "and early stopping."
    ),
    "batch": (
        "**Small batches win within an epoch cap.** Batch 32 against 64: +0.1 pt on digits (20 "
        "epochs), +0.7 pt [0.1, 1.3] on MNIST-10k (6 epochs), +3.2 pt [1.5, 4.9] on textures (8 "
        "epochs); 128 and 256 lost 0.5-13 pt (fewer steps in the same epochs; significant on "
        "MNIST-10k: -0.5 [-0.7, -0.4] and -1.3 [-2.2, -0.5] pt). 64 stays the default start (32 "
        "costs more time per epoch); the search samples 32-256."
    ),
    "early-stopping": (
        "**Neutral at these epoch caps.** Training every epoch and keeping the last weights was as "
        "accurate (digits +0.25 pt [-0.66, 1.16], MNIST-10k and textures 0.0 pt, the same "
        "networks): within 20 (6, 8) epochs the networks were still improving, so early stopping "
        "rarely stopped. Its value is at longer caps, which this ablation did not run."
    ),
}
