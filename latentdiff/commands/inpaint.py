"""``latentdiff inpaint`` (repaint the white part of a mask from a prompt) and ``latentdiff train-inpaint``
(fine-tune a dedicated inpainting model from a text-to-image one). torch and diffusers are imported only
when a command runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentdiff.commands.generate import (
    SAMPLERS,
    UserWarnings,
    check_request,
    check_spatial_flags,
    free_path,
    limit_flags,
    model_flags,
    parse_device,
    parse_float,
    parse_int,
    parse_limits,
    parse_sampler,
    prepare_out_dir,
    prompt_slug,
    spatial_conditions,
    spatial_flags,
)
from latentdiff.commands.train import add_latent_cache_arg
from latentdiff.errors import UserError
from latentdiff.limits import MAX_MASK_BLUR, MAX_RESAMPLE, MAX_SEED

MODES = ("auto", "model", "blend")  # mirrors latentdiff.inpaint.MODES (lazy import)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``inpaint`` and ``train-inpaint``."""
    p = sub.add_parser("inpaint", help="repaint the masked part of an image from a prompt",
                       description="Repaint where the mask is white (L, RGB or RGBA mask the image's size; a mask "
                                   "that selects nothing is refused). Modes: "
                                   "'model' uses a dedicated inpainting model (9-channel U-Net); 'blend' works "
                                   "with any text-to-image model (blended latent diffusion); 'auto' picks 'model' "
                                   "when the model is an inpainting model. Pixels further than --mask-blur px "
                                   "outside the mask are the input's, exactly. Prints the paths it writes.")
    p.add_argument("prompt", help="what to paint in the masked region")
    p.add_argument("--image", required=True, metavar="IMG", help="the input image")
    p.add_argument("--mask", default=None, metavar="MASK", help="the mask: white = repaint, black = keep")
    p.add_argument("--mask-from-alpha", action="store_true",
                   help="use the image's alpha channel as the mask instead (transparent = repaint)")
    p.add_argument("--mode", default="auto", metavar="MODE", help=f"{' | '.join(MODES)} (default: auto)")
    p.add_argument("--strength", default="1.0", metavar="S",
                   help="share of the steps to run, from the input noised to that level (default: 1 = "
                        "from pure noise)")
    p.add_argument("--mask-blur", default=None, metavar="PX",
                   help="feather width in pixels outside the mask (default: 4; 0 = hard edge)")
    p.add_argument("--resample", default="1", metavar="U",
                   help="RePaint resampling: retake each step U times (blend mode, --sampler ddpm; default: 1)")
    model_flags(p)
    p.add_argument("--negative-prompt", default="", metavar="TEXT", help="what to steer away from (default: '')")
    p.add_argument("--num-images", default="1", metavar="N", help="number of images (default: 1)")
    p.add_argument("--steps", default=None, metavar="N", help="sampling steps (default: the model's)")
    p.add_argument("--guidance", default=None, metavar="W",
                   help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--sampler", default=None, metavar="NAME", help=f"{' | '.join(SAMPLERS)} (default: the model's)")
    p.add_argument("--seed", default="0", metavar="S", help="image k uses seed S + k (default: 0)")
    p.add_argument("--batch-size", default=None, metavar="N", help="images per forward pass (default: up to 8)")
    p.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: outputs)")
    p.add_argument("--device", default="auto", metavar="DEV", help="cpu | cuda | auto (default: auto)")
    spatial_flags(p.add_argument_group("layout and segmentation map, as in generate (the image's size, padded to "
                                       "a multiple of 8)"))
    limit_flags(p)
    p.set_defaults(handler=run_inpaint)

    t = sub.add_parser("train-inpaint", help="fine-tune an inpainting model from a text-to-image model",
                       description="Fine-tune a dedicated inpainting model (configs/inpaint.yaml): the base "
                                   "model's U-Net gets diffusers' 9 input channels and learns from random masks "
                                   "(object boxes, strokes, rectangles, the whole image). Writes OUT/model, a "
                                   "StableDiffusionInpaintPipeline folder. A recipe with 'phases' runs each "
                                   "phase in order (phase k into OUTk), each from the one before; with "
                                   "--resume, finished phases are skipped.")
    t.add_argument("config", help="YAML recipe, e.g. configs/inpaint.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint (of every phase)")
    t.add_argument("--out", help="output folder (overrides the recipe's 'out'; later phases: OUT2, OUT3, ...)")
    t.add_argument("--model", "--base-model", dest="base_model", metavar="PATH",
                   help="the text-to-image model to start from (overrides the recipe's 'base_model')")
    add_latent_cache_arg(t)
    t.set_defaults(handler=run_train_inpaint)


def _choose_model(args, mode: str) -> str | None:
    """--model, else the shipped inpainting model (modes auto/model) or the default model (blend)."""
    from latentdiff.inpaint import INPAINT_MODEL_DIR

    if args.model is not None:
        return args.model
    if mode == "blend":
        return None
    if (INPAINT_MODEL_DIR / "model_index.json").is_file():
        return str(INPAINT_MODEL_DIR)
    if mode == "model":
        raise UserError(f"no inpainting model is installed (expected {INPAINT_MODEL_DIR}); pass --model PATH "
                        f"or use --mode blend")
    return None


def run_inpaint(args: argparse.Namespace) -> int:
    from latentdiff.pipeline import Pipeline
    from latentdiff.provenance import Record, save_png

    if args.mode not in MODES:
        raise UserError(f"--mode {args.mode!r}: expected one of {', '.join(MODES)}")
    limits = parse_limits(args)
    strength = parse_float("--strength", args.strength)
    blur = parse_int("--mask-blur", args.mask_blur, 0, MAX_MASK_BLUR)
    resample = parse_int("--resample", args.resample, 1, MAX_RESAMPLE)
    num = parse_int("--num-images", args.num_images, 1)
    steps = parse_int("--steps", args.steps, 1)
    guidance = parse_float("--guidance", args.guidance)
    sampler = parse_sampler(args.sampler)
    seed = parse_int("--seed", args.seed, 0, MAX_SEED - (num - 1))
    batch = parse_int("--batch-size", args.batch_size, 1)
    check_request(limits, prompt=args.prompt, negative_prompt=args.negative_prompt, num=num, steps=steps,
                  height=None, width=None, batch=batch)
    device = parse_device(args.device)
    scales = check_spatial_flags(args)
    for flag, value in (("--image", args.image), ("--mask", args.mask)):
        if value is not None and not Path(value).is_file():
            raise UserError(f"{flag} {value}: file not found")
    from latentdiff.inpaint import load_inputs

    # sizes, modes and a mask that selects nothing: refused before the model loads
    inputs = load_inputs(args.image, args.mask, mask_from_alpha=args.mask_from_alpha, max_side=limits.max_side)
    out = prepare_out_dir(args.out)
    pipe = Pipeline.load(_choose_model(args, args.mode), device=device or "auto", config=args.config,
                         allow_unsafe_pickle=args.allow_unsafe_pickle)
    pipe.limits = limits
    f = pipe.vae_scale_factor  # the images are drawn at the input's size padded to multiples of f
    conditions = spatial_conditions(pipe, args, scales, -(-inputs.height // f) * f, -(-inputs.width // f) * f,
                                    guidance)
    kwargs = {} if blur is None else {"mask_blur": blur}
    with UserWarnings("inpaint"):
        images = pipe.inpaint(args.prompt, args.image, args.mask, mode=args.mode, strength=strength,
                              resample=resample, mask_from_alpha=args.mask_from_alpha,
                              negative_prompt=args.negative_prompt, num_images=num, steps=steps,
                              guidance=conditions.guidance, sampler=sampler, seed=seed,
                              progress=sys.stderr.isatty(), batch_size=batch, spatial=conditions.spatial,
                              **kwargs)
    for img in images:
        record = Record.from_json(img.info["latentdiff"])
        print(save_png(img, free_path(out, f"{prompt_slug(args.prompt)}_inpaint_{record.seed}"), record))
    return 0


def run_train_inpaint(args: argparse.Namespace) -> int:
    from latentdiff.train.inpaint import load_inpaint_recipe, train_inpaint_recipe

    phases = load_inpaint_recipe(args.config, out=args.out, base_model=args.base_model,
                                 latent_cache=args.latent_cache)
    print(f"model: {train_inpaint_recipe(phases, resume=args.resume)}")
    return 0
