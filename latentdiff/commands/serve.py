"""``latentdiff serve``: the local web app (:mod:`latentdiff.web`). Loads the model once, binds to
loopback unless told otherwise, prints the URL (with the token when one is needed) and serves until
interrupted. What the server guards against: :mod:`latentdiff.web.security`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentdiff.commands.generate import limit_flags, load_pipeline, model_flags, parse_device, parse_int, parse_limits
from latentdiff.errors import UserError
from latentdiff.limits import WEB_LIMITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web app: generate, inpaint with a painted mask, draw a layout",
                       description="Serve the web app on http://HOST:PORT/ (loopback by default: other machines "
                                   "cannot reach it unless --host says so). Requests queue and run one at a time.")
    model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 = every "
                                                      "interface, reachable from the network: the token is then "
                                                      "required)")
    p.add_argument("--port", default="7860", metavar="N", help="port (default: 7860; 0 = any free port)")
    p.add_argument("--token", default="auto", metavar="MODE",
                   help="auto | on | off: whether API calls need this launch's token (printed in the URL; its value "
                        "from $LATENTDIFF_TOKEN, else random). auto (default): on when --host is beyond loopback; "
                        "off is refused there")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host is NAME (e.g. behind a reverse proxy); IP addresses and "
                        "localhost always are")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also take API calls from pages at ORIGIN (scheme://host[:port]); by default only this "
                        "server's own page")
    p.add_argument("--device", default=None, metavar="DEV", help="cpu | cuda | cuda:N | auto (default: auto)")
    p.add_argument("--layout-model", default=None, metavar="DIR",
                   help="layout (GLIGEN) checkpoint for the Layout panel (default: MODEL/gligen when it exists)")
    p.add_argument("--segmap-model", default=None, metavar="DIR",
                   help="segmentation ControlNet for the Segmentation-map panel (default: MODEL/controlnet "
                        "when it exists)")
    p.add_argument("--inpaint-model", default=None, metavar="DIR",
                   help="inpainting model for the Inpaint panel; 'none': the served model blends (default: the "
                        "shipped inpainting model when serving the default model, else none)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a LoRA file (to the served model, not to --inpaint-model)")
    p.add_argument("--speed", default="auto", metavar="LIST",
                   help="speed options as for generate, e.g. auto or fast (see docs/performance.md; default: auto, "
                        "the fast path this machine supports; plain: the exact float32 path)")
    limit_flags(p, "per request", WEB_LIMITS)
    p.set_defaults(handler=run_serve)


def attach_spatial(pipe, layout_model: str | None, segmap_model: str | None) -> None:
    """Attach the layout and segmentation checkpoints the panels need: the folders given, else the model's
    layout and segmap companions when it has them (:func:`latentdiff.checkpoint.companion`; a panel without
    one says so in the page)."""
    from latentdiff.commands.generate import spatial_checkpoint

    for flag, given, role, attach in (("--layout-model", layout_model, "layout", pipe.attach_layout),
                                      ("--segmap-model", segmap_model, "segmap", pipe.attach_segmap)):
        folder = spatial_checkpoint(pipe, flag, given, role, required=False)
        if folder is not None:
            attach(folder)


def load_inpaint_model(pipe, given: str | None, device: str | None):
    """The Pipeline the Inpaint panel uses besides ``pipe``, or None (``pipe`` inpaints itself): the folder
    given (which must be an inpainting model), none for 'none', else the shipped inpainting model when
    ``pipe`` is the default model (as ``latentdiff inpaint`` picks it)."""
    from latentdiff.inpaint import INPAINT_MODEL_DIR
    from latentdiff.pipeline import Pipeline

    if given == "none" or (given is None and not (pipe.is_default and
                                                  (INPAINT_MODEL_DIR / "model_index.json").is_file())):
        return None
    if given is not None and not Path(given).is_dir():
        raise UserError(f"--inpaint-model {given}: no such folder")
    inpaint = Pipeline.load(given or INPAINT_MODEL_DIR, device=device or "auto")
    if not inpaint.is_inpainting:
        raise UserError(f"--inpaint-model {given}: not an inpainting model (its U-Net takes "
                        f"{inpaint.unet.config.in_channels} input channels, an inpainting one "
                        f"{2 * inpaint.latent_channels + 1}); pass 'none' to inpaint with the served model")
    return inpaint


def run_serve(args: argparse.Namespace) -> int:
    from latentdiff.lora import parse_lora_spec
    from latentdiff.speed import speed_option
    from latentdiff.web.security import parse_origins, token_required
    from latentdiff.web.server import make_server, page_url

    port = parse_int("--port", args.port, 0, 65535)
    limits = parse_limits(args, WEB_LIMITS)
    token_required(args.host, args.token)  # a bad --token, or off beyond loopback: before the model loads
    parse_origins(args.allow_origin)
    device = parse_device(args.device)
    loras = [parse_lora_spec(text) for text in args.lora]
    speed = speed_option(args.speed)
    pipe = load_pipeline(args, args.model, device)
    attach_spatial(pipe, args.layout_model, args.segmap_model)
    inpaint = load_inpaint_model(pipe, args.inpaint_model, device)
    if loras:
        pipe.load_loras(loras)
    if speed is not None:
        for p in (pipe, inpaint):
            if p is not None:
                p.optimize(speed)
    try:
        server = make_server(pipe, args.host, port, limits, inpaint_pipe=inpaint, auth=args.token,
                             allow_hosts=args.allow_host, allow_origins=args.allow_origin)
    except OSError as exc:
        raise UserError(f"--host {args.host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    also = f" (inpainting: {inpaint.name})" if inpaint is not None else ""
    print(f"latentdiff serve: {pipe.name}{also} at {page_url(server)}  (Ctrl-C stops)", flush=True)
    if server.guard.token is not None:
        print("latentdiff serve: API calls need the token in that URL (the page keeps it in a cookie; scripts send "
              "'Authorization: Bearer TOKEN')", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("latentdiff serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
