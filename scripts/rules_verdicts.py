"""The verdicts of docs/rules.md, written by a person from the tables ``scripts/rules_doc.py`` puts
beside them (digits: 3 seeds x 2 networks, 20 epochs; textures: 3 seeds x 1 network, 8 epochs;
MNIST-10k: 3 seeds x 1 network, 6 epochs). "pt": percentage points of test accuracy, paired
against the rule's arm, with the 95% interval."""

VERDICTS = {
    "R1": (
        "**Does not hold as stated; growth buys accuracy only on the harder data.** x4 does not make "
        "every layer cost the same in measured time: the per-conv-layer spread after the stem (CV) "
        "is 0.68 / 0.27 / 0.34 with x4 on digits / textures / MNIST-10k, against 0.44 / 0.03 / 0.03 "
        "with x2 and 0.07 / 0.29 / 0.24 with constant width, because the time per filter grows with "
        "its input channels (x2, constant MACs per layer, is the balanced one where the maps halve). "
        "x4 was the most accurate on textures (x2 -3.8 pt [-6.9, -0.7], constant width -11.8 pt "
        "[-16.0, -7.6]), not significantly on digits (-2.0, -3.2 pt) or MNIST-10k (-0.4, -0.4 pt), "
        "at 1.6-2.7x the measured time: per measured millisecond the narrower networks win "
        "everywhere (MNIST-10k: 3.3 / 5.4 / 7.3 test accuracy per ms). No default changed: the "
        "search draws x2 (default) and x4."
    ),
    "R2": (
        "**Holds.** On 8x8 digits the rule gives 3x3 (the 3x3 arm is the same network); 5x5 gains "
        "+0.6 pt (not significant) for 2x the time. On 32x32 textures with at most 2 stages the rule "
        "gives 5x5, and 3x3 loses 11.3 pt [7.6, 14.9]."
    ),
    "R3": (
        "**Not a free win.** Two stacked 3x3 matched one 5x5 on digits (0.0 pt [-1.3, 1.3], 6% "
        "faster measured) and did not beat it on textures (-2.7 pt [-11.8, 6.4], 59% slower "
        "measured: a second full-resolution conv on a 32x32 map). Stacking stays off by default and "
        "in the search space."
    ),
    "R4": (
        "**Holds.** Stride-2 convolutions instead of pooling lost 3.0 pt on digits (not significant, "
        "[-6.5, 0.6]) and 12.4 pt [9.0, 15.7] on textures, where they halved the time."
    ),
    "R5": (
        "**Not established.** Valid padding: +0.4 pt on digits (1-stage networks only: valid 3x3 "
        "convs leave an 8x8 input too small for a second stage) and -2.8 pt on textures, neither "
        "significant, 10-25% faster. Same padding stays the default because it keeps depth possible "
        "on small inputs."
    ),
    "R6": (
        "**Not established.** Equal-width heads against halving widths: -0.7 pt on textures (not "
        "significant); on digits the equal arm lost 13.5 pt on average because one draw with two "
        "wide dense layers failed to train, an interval of [-47, 20] pt that says nothing."
    ),
    "R7": (
        "**The textbook r = 1/n_in^2 fails; among the others it depends on batch norm.** Textbook "
        "init trained one digits draw to chance (54% mean) and lost 15 pt on textures, but matched "
        "Kaiming on MNIST-10k's batch-normalised default network. LeCun and Glorot beat Kaiming on "
        "textures (+8.2 pt [6.8, 9.7], +5.8 pt [4.7, 6.9] at 8 epochs) and were level on digits "
        "(+2.2, +1.4 pt) and MNIST-10k (+0.5 pt), all with batch norm; without it Kaiming won "
        "clearly on deep networks (docs/benchmarks.md, \"Init schemes\"). Kaiming stays the "
        "default; the search draws all three."
    ),
    "balance": (
        "**Balances time; accuracy per millisecond follows only where accuracy holds.** "
        "Rebalancing brought the measured per-conv-layer spread down (digits CV 0.57 to 0.20; 30 "
        "networks at batch 1: median 0.34 to 0.12, docs/benchmarks.md \"Compute balancing\") and "
        "the measured time down 7-15%. On MNIST-10k accuracy held (-0.2 pt [-1.1, 0.6]) and test "
        "accuracy per ms rose from 5.35 to 6.32; on textures -0.8 pt (not significant); on digits "
        "-9.3 pt, because one rebalanced draw trained badly (34%). Not shown to pay on every "
        "dataset, so it stays off by default (the search may draw it)."
    ),
    "lr": (
        "**Depends on the epochs.** With 20 epochs on digits 1e-3 was best (3e-4: -1.9 pt; 1e-2: "
        "-0.8 pt; 3e-3 collapsed on one draw). With 8 epochs on textures the networks were still "
        "learning and 3e-3 and 1e-2 gained 7.4 and 7.6 pt, 3e-4 lost 15 pt. 1e-3 stays the default "
        "start; the search samples 1e-4 to 3e-2."
    ),
    "loss": (
        "**Does not hold here.** Squared error on the softmax trained as well as cross-entropy: "
        "-0.1 pt on digits, -0.8 pt on textures, neither significant. Cross-entropy stays the "
        "default (no reason to change, none to prefer MSE)."
    ),
    "reg": (
        "**Not established.** L2 1e-5 against none: +0.4 and +0.6 pt; L2 1e-3 and L1 1e-5 within "
        "0.3 pt of it; no difference is significant on these small networks with batch norm and "
        "early stopping."
    ),
    "batch": (
        "**Small batches win within an epoch cap.** Batch 32 against 64: +0.3 pt on digits, "
        "+3.2 pt [1.5, 4.9] on textures (8 epochs); 128 and 256 lost 2-13 pt (fewer steps in the "
        "same epochs). 64 stays the default start (32 costs more time per epoch); the search samples "
        "32-256."
    ),
    "early-stopping": (
        "**Neutral at these epoch caps.** Training every epoch and keeping the last weights was as "
        "accurate (digits -0.06 pt [-0.22, 0.10], textures 0.0 pt): within 20 (8) epochs the "
        "networks were still improving, so early stopping rarely stopped (19.0 of 20 epochs on "
        "digits, 8 of 8 on textures). Its value is at longer caps, which this ablation did not run."
    ),
}
