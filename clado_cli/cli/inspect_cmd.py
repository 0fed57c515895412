from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ..console import out
from .common import (CacheDirOpt, ConfigOpt, DataOpt, JsonOpt, ModelOpt, QuietOpt, WeightsOpt, boundary, load,
                     print_json, session_for)


@boundary
def inspect(config: Optional[Path] = ConfigOpt,
            cache: Optional[Path] = typer.Option(None, "--cache", help="A fingerprint directory (default: the config's)."),
            bits: Optional[str] = typer.Option(None, "--bits", help="Option for the interaction heatmap: a width (4), a pair "
                                               "with activation options (w4a8), or two as w4a8:w2a8 (default: the first)."),
            heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the CLADO interaction heatmap PNG here."),
            csv: Optional[Path] = typer.Option(None, "--csv", help="Write every method's per-option sensitivities as CSV "
                                               "here (method,layer,numel,bits,value), for optimize --sensitivities."),
            csv_pairs: Optional[Path] = typer.Option(None, "--csv-pairs", help="Write CLADO's pair terms as CSV here "
                                                     "(layer_a,bits_a,layer_b,bits_b,value), for optimize --pairs."),
            model: Optional[str] = ModelOpt, weights: Optional[str] = WeightsOpt, data: Optional[str] = DataOpt,
            cache_dir: Optional[str] = CacheDirOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt):
    """Per-layer sensitivities of each cached method, and the CLADO cross-layer interaction heatmap.

    Example: clado inspect --config configs/demo.yaml --heatmap runs/demo/interactions.png --csv sens.csv

    Example: clado inspect --config configs/demo.yaml --csv sens.csv --csv-pairs pairs.csv
    """
    from ..decide import open_cache
    from ..inspect_cache import inspect as inspect_lib, write_csv
    from ..plots import heatmap_plot

    cfg = load(config, quiet, model=model, weights=weights, data=data, cache_dir=cache_dir)
    c = open_cache(cache, lambda: session_for(cfg))
    rep = inspect_lib(c, bits, pairs_csv=csv_pairs)
    if heatmap is not None:
        if "interaction" not in rep:
            from ..errors import UsageError

            raise UsageError("--heatmap needs CLADO sensitivities in the cache (run clado prep clado)")
        a, _, b = str(rep["interaction"]["bits"]).partition(":")
        heatmap_plot(np.array(rep["interaction"]["matrix"]), rep["layers"], heatmap,
                     f"CLADO cross-layer interactions G[(l,{a}),(m,{b or a})]")
        rep["heatmap"] = str(heatmap)
    if csv is not None:
        write_csv(rep, csv)
    if as_json:
        print_json(rep)
        return
    for m, info in rep["methods"].items():
        t = Table(title=f"{m}: per-layer sensitivity (batches {info['batches'][0]}..{info['batches'][-1]})",
                  caption="value ± standard error across batches; * within two standard errors of zero"
                  if info.get("per_layer_se") else None)
        t.add_column("layer")
        for b in rep["options"]:
            t.add_column(f"{b}-bit" if b.isdigit() else b, justify="right")
        ses = info.get("per_layer_se") or [None] * len(info["per_layer"])
        for name, vals, se in zip(rep["layers"], info["per_layer"], ses):
            # ± one standard error across batches; * marks a value within two of zero
            t.add_row(name, *[f"{v:.4g}" if s is None else f"{v:.4g} ± {s:.2g}{' *' if abs(v) <= 2 * s else ''}"
                              for v, s in zip(vals, se or [None] * len(vals))])
        out.print(t)
    if heatmap is not None:
        out.print(f"heatmap: {heatmap}")
