"""Object replacement on held-out shapes scenes: does inpainting paint the asked-for object in the hole and
leave the rest alone?

Each case (:func:`edit_cases`) is a fresh scene of 2–3 objects (seeded apart from any training set, no
held-out combination), one object masked by its box dilated by 2 px, and a prompt naming a *different*
object — another colour and/or shape, the same size — for that place: "a small purple square in the top
left". The target is the same scene with that object swapped, rendered exactly.

:func:`score_edit` passes a result when the scorer finds (1) an object of the new colour and shape whose
box lies inside the mask, (2) every other object with its colour and shape and its box (IoU ≥ 0.5), and
(3) no other object: as many objects as the scene has. :func:`evaluate` runs a pipeline over the cases in
batches through :meth:`Pipeline.sample_rows` (the library's one sampling path) and also measures the seam
(:mod:`latentdiff.eval.seams`) of the hard and the feathered composite against the rendered target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from latentdiff.data.shapes import (
    BASE_SHAPES,
    COLOURS,
    Scene,
    ShapeObject,
    box_mask,
    is_held_out,
    render,
    scene_for_index,
)
from latentdiff.eval.accuracy import wilson
from latentdiff.eval.scorer import box_iou, find_objects
from latentdiff.eval.seams import seam_score

EVAL_SEED = 777_001  # scenes of the evaluation; training sets use seeds 0..N (shapes_seed 1 by default)


@dataclass(frozen=True)
class EditCase:
    """One object-replacement task. ``mask``: (64, 64) uint8, 255 = repaint."""

    scene: Scene
    index: int
    new: ShapeObject
    target: Scene
    mask: np.ndarray
    prompt: str


def _replacement(rng: np.random.Generator, scene: Scene, k: int) -> ShapeObject | None:
    old = scene.objects[k]
    taken = {(o.colour, o.shape) for o in scene.objects}
    choices = [(c, s) for c in COLOURS for s in BASE_SHAPES if (c, s) not in taken]
    for i in rng.permutation(len(choices)):
        colour, shape = choices[i]
        new = ShapeObject(shape, colour, old.size, old.position, old.centre, old.box)
        objects = scene.objects[:k] + (new,) + scene.objects[k + 1:]
        if not is_held_out(Scene(scene.background, objects)):
            return new
    return None


def edit_cases(n: int = 200, seed: int = EVAL_SEED, dilate: int = 2) -> list[EditCase]:
    """``n`` object-replacement cases (module docstring), the same for a given seed."""
    rng = np.random.default_rng(seed)
    cases, i = [], 0
    while len(cases) < n:
        scene, _ = scene_for_index(seed, i, objects=(2, 3), exclude_held_out=True)
        i += 1
        k = int(rng.integers(len(scene.objects)))
        new = _replacement(rng, scene, k)
        if new is None:
            continue
        target = Scene(scene.background, scene.objects[:k] + (new,) + scene.objects[k + 1:])
        prompt = f"a {new.size} {new.colour} {new.shape} in the {new.position}"
        cases.append(EditCase(scene, k, new, target, box_mask(scene, k, dilate), prompt))
    return cases


@dataclass(frozen=True)
class EditScore:
    new_in_mask: bool  # an object of the new colour and shape, its box inside the mask
    others_kept: bool  # every other object found with its colour, shape and box (IoU >= 0.5)
    count: bool  # no leftover or extra object
    num_found: int

    @property
    def success(self) -> bool:
        return self.new_in_mask and self.others_kept and self.count


def _inside(box, mask: np.ndarray, tol: int = 1) -> bool:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = box
    return x0 >= xs.min() - tol and y0 >= ys.min() - tol and x1 <= xs.max() + 1 + tol and y1 <= ys.max() + 1 + tol


def score_edit(image: np.ndarray, case: EditCase) -> EditScore:
    """Score an inpainted image (64, 64, 3) uint8 against its case (module docstring)."""
    found = find_objects(image)
    new = case.new
    new_ok = any(f.colour == new.colour and f.shape == new.shape and _inside(f.box, case.mask) for f in found)
    others = [o for j, o in enumerate(case.scene.objects) if j != case.index]
    kept = all(any(f.colour == o.colour and f.shape == o.shape and box_iou(f.box, o.box) >= 0.5 for f in found)
               for o in others)
    return EditScore(new_ok, kept, len(found) == len(case.scene.objects), len(found))


def evaluate(pipe, cases: list[EditCase], mode: str, *, steps: int | None = None, guidance: float | None = None,
             sampler: str | None = None, seed: int = 0, mask_blur: int = 4, batch_size: int = 16,
             progress: bool = True) -> tuple[dict, list[np.ndarray]]:
    """Inpaint every case with ``pipe`` in ``mode`` (model | blend | auto); returns (report dict, the
    feathered results (64, 64, 3) uint8). Case i uses seed + i."""
    from latentdiff.inpaint import InpaintBatch, composite, feather, load_inputs, prepare_batch, resolve_mode
    from latentdiff.request import Row

    mode = resolve_mode(pipe, mode)
    opts = pipe.resolve(steps, guidance, sampler, 64, 64)
    rows, results = [], []
    for start in tqdm(range(0, len(cases), batch_size), desc=f"inpaint {mode}", disable=not progress):
        chunk = cases[start:start + batch_size]
        inputs = [load_inputs(render(c.scene)[0], c.mask, pipe.vae_scale_factor) for c in chunk]
        batch = InpaintBatch.cat([prepare_batch(pipe, x, mode) for x in inputs])
        drawn = [Row(c.prompt, "", seed + start + i) for i, c in enumerate(chunk)]
        raw = pipe.decode_latents(pipe.sample_rows(drawn, inpaint=batch, **opts))  # (B, 64, 64, 3)
        for c, x, px in zip(chunk, inputs, raw):
            hard = composite(px, x.image, feather(x.mask, 0))
            soft = composite(px, x.image, feather(x.mask, mask_blur))
            results.append(soft)
            rows.append(_case_row(c, px, hard, soft, x.image, mask_blur))
    return summarise(rows, mode, opts, mask_blur), results


def _case_row(case: EditCase, raw, hard, soft, original, width: int) -> dict:
    target = render(case.target)[0]
    s = score_edit(soft, case)
    return {"prompt": case.prompt, **asdict(s), "success": s.success,
            "seam_hard": seam_score(hard, target, case.mask, width).excess,
            "seam_feathered": seam_score(soft, target, case.mask, width).excess,
            "seam_raw": seam_score(raw, target, case.mask, width).excess,
            "seam_input": seam_score(original, target, case.mask, width).excess}


def summarise(rows: list[dict], mode: str, opts: dict, mask_blur: int) -> dict:
    """Rates with 95% Wilson intervals and mean seam excesses over the cases."""
    n = len(rows)

    def rate(key):
        k = sum(bool(r[key]) for r in rows)
        return {"rate": k / n, "correct": k, "n": n, "ci95": list(wilson(k, n))}

    seams = {k: float(np.mean([r[k] for r in rows])) for k in ("seam_hard", "seam_feathered", "seam_raw", "seam_input")}
    return {"mode": mode, **opts, "mask_blur": mask_blur, "success": rate("success"),
            "new_in_mask": rate("new_in_mask"), "others_kept": rate("others_kept"), "count": rate("count"),
            "seam_excess": seams, "cases": rows}
