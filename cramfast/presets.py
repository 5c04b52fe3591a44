"""Named starting points, as changes from the defaults of settings.py (the published protocol).

``paper``: exactly the published settings (Kuratov et al. 2025); the sweep's default, for
reproducing Table 1.

``fast``: this project's default, chosen by the optimizer studies (lab/study/README.md). A
text's first attempt starts from the mean of its input embeddings at 20 times the random init's
norm; LAMB (lr 0.2 of each mem vector's norm) cosine-decayed to a tenth over 7 updates per
predicted token; the focal objective (gamma 1); a stall restart after 10 updates per predicted
token without a better accuracy; parallel attempts in idle slots at the tail of a run (sized to
the device: 4 on a CPU, every slot on CUDA); with bf16/fp16 weights, a margin of one logit at
every position (why: lab/study/margin/).
"""
PRESETS = {
    "paper": {},
    "fast": dict(optimizer="lamb", lr=0.2, decay_steps_per_token=7.0, final_lr_ratio=0.1,
                 focal_gamma=1.0, stall_steps_per_token=10.0, fill_slots=-1, init="text_mean",
                 init_scale=20.0, margin_16bit=1.0),
}
DEFAULT_PRESET = "fast"     # what compress and the command line use unless told otherwise
