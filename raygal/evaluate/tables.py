"""The result of ``raygal evaluate`` as Markdown tables, for people (``metrics.md``, the
terminal, the report page). Works on the in-memory result and on ``metrics.json`` read back,
where a missing value (NaN) is null: every number goes through ``num``, which prints '—'."""
from __future__ import annotations

import math


def num(x, spec: str = ".3f") -> str:
    """``x`` formatted with ``spec``, or '—' for None/NaN/inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(cells) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


def target_table(targets: dict) -> list[str]:
    """Per-target accuracy and coverage of the catalog."""
    lines = _header(["target", "R²", "RMSE", "bias", "σ_NMAD", "outliers", "cov68", "cov95",
                     "W1(means)", "n", "no truth"])
    for t, m in targets.items():
        lines.append(_row([t, num(m["r2"]), num(m["rmse"]), num(m["bias"], "+.3f"),
                           num(m["sigma_nmad"]), num(m["outlier_fraction"]),
                           num(m.get("coverage68")), num(m.get("coverage95")),
                           num(m.get("wasserstein_means_vs_truth")), m["n"],
                           m.get("n_no_truth", "—")]))
    return lines


def calibration_table(result: dict) -> list[str]:
    cal, info = result["calibration"], result.get("information", {})
    lines = [f"Calibration on {info.get('n_galaxies', cal['n'])} galaxies with status ok "
             f"(model space, {info.get('samples', '?')} samples each; each target scored on "
             f"the galaxies whose truth of it is known, n):", ""]
    lines += _header(["target", "cov68", "cov95", "PIT χ² p", "SBC KS p", "n"])
    for t, m in cal["targets"].items():
        lines.append(_row([t, num(m["coverage68"]), num(m["coverage95"]),
                           num(m["pit_pvalue"], ".3g"), num(m["sbc_ks_pvalue"], ".3g"),
                           m["n"]]))
    if cal.get("tarp"):
        lines += ["", f"TARP on {cal['n']} galaxies with every truth known: ATC "
                      f"{num(cal['tarp']['atc'], '+.3f')} (0 is calibrated, > 0 "
                      f"under-confident), KS p {num(cal['tarp']['ks_pvalue'], '.3g')}"]
    return lines


def information_line(info: dict) -> str:
    return (f"mean log q {num(info.get('mean_log_q'), '.2f')}, mean Δlog p "
            f"{num(info.get('mean_delta_log_p'), '.2f')} (n = {info.get('n_delta_log_p', '—')}"
            f"), mean KL {num(info.get('mean_kl'), '.2f')} (n = {info.get('n_kl', '—')})")


def prior_line(prior: dict) -> str:
    if "missing" in prior:
        return f"Empirical prior: none ({prior['missing']})."
    return (f"Empirical prior: a KDE of {prior['kernel_centres']} true target vectors from "
            f"the {prior['source']} ({prior['rows_complete']} complete rows available), "
            f"none of them a galaxy scored here.")


def population_tables(pops: dict, targets) -> list[str]:
    """R² and 68/95 % coverage per population and target, and the information gain."""
    metrics = pops.get("metrics", {})
    if not metrics:
        return []
    targets = [t for t in targets if any(t in m["targets"] for m in metrics.values())]
    lines = ["R² of the posterior means by population (n: rows with status ok):", ""]
    lines += _header(["population", "n", *targets])
    for name, m in metrics.items():
        lines.append(_row([name, m["n_ok"], *(num(m["targets"].get(t, {}).get("r2"))
                                              for t in targets)]))
    lines += ["", "Coverage of the catalog's 68 % / 95 % intervals by population:", ""]
    lines += _header(["population", *targets])
    for name, m in metrics.items():
        cells = []
        for t in targets:
            s = m["targets"].get(t, {})
            cells.append(f"{num(s.get('coverage68'), '.2f')} / {num(s.get('coverage95'), '.2f')}")
        lines.append(_row([name, *cells]))
    if any("information" in m for m in metrics.values()):
        lines += ["", "Information gain by population (calibration galaxies):", ""]
        lines += _header(["population", "mean log q", "mean Δlog p", "n", "mean KL", "n"])
        for name, m in metrics.items():
            i = m.get("information")
            if i:
                lines.append(_row([name, num(i["mean_log_q"], ".2f"),
                                   num(i["mean_delta_log_p"], ".2f"), i["n_delta_log_p"],
                                   num(i["mean_kl"], ".2f"), i["n_kl"]]))
    notes = []
    for group, g in pops.get("groups", {}).items():
        if "missing" in g:
            notes.append(f"{group}: not scored ({g['missing']})")
        else:
            what = g.get("definition") or f"{g['source']}, edges {g['edges']} ({g['edges_from']})"
            notes.append(f"{group}: {what}; {g.get('unclassified', 0)} rows unclassified")
    return lines + [""] + [f"- {n}" for n in notes]


def baseline_table(result: dict) -> list[str]:
    """The posterior's R² and σ_NMAD beside the baseline regressors', per target, on the same
    rows (those no baseline was fitted on)."""
    base = result["baselines"]
    names = list(base["models"])
    tr = base["training"]
    lines = [f"Posterior means vs baseline regressors on the photometric features, fitted on "
             f"the {tr['source']}, scored on {tr['rows_scored']} evaluated rows none was "
             f"fitted on:", ""]
    lines += _header(["target", *(f"R² {n}" for n in names),
                      *(f"σ_NMAD {n}" for n in names), "n"])
    for t, m in base["models"]["posterior"].items():
        b = [base["models"][n].get(t, {}) for n in names]
        lines.append(_row([t, *(num(x.get("r2")) for x in b),
                           *(num(x.get("sigma_nmad")) for x in b), m["n"]]))
    return lines + ["", "σ_NMAD of z is that of Δz/(1+z)."]


def compare_lines(result: dict) -> list[str]:
    c = result["compare"]
    a, b = c["labels"]
    lines = [f"Compared with {c['catalog']} ({b}):", ""]
    lines += _header(["target", f"R² {a}", f"R² {b}", f"cov68 {a}", f"cov68 {b}"])
    for t, m in result["targets"].items():
        m2 = c["targets"].get(t, {})
        lines.append(_row([t, num(m["r2"]), num(m2.get("r2")), num(m.get("coverage68")),
                           num(m2.get("coverage68"))]))
    if "information" in c:
        lines += ["", f"{b}: " + information_line(c["information"])]
    if "win_rate_delta_log_p" in c:
        lines.append(f"{a} wins Δlog p on {num(c['win_rate_delta_log_p'], '.1%')} and KL on "
                     f"{num(c['win_rate_kl'], '.1%')} of galaxies")
    return lines


def format_table(result: dict) -> str:
    """The metrics as Markdown, for people."""
    lines = [f"# raygal evaluation of {result['catalog']}", "",
             f"{result['rows_evaluated']} rows evaluated "
             f"({num(result['fraction_evaluated'], '.0%')} of the data); status: "
             + ", ".join(f"{k} {v}" for k, v in result["rows_per_status"].items()), ""]
    if result.get("rows_in_train_split"):
        lines += [f"**{result['rows_in_train_split']} evaluated rows are in the training "
                  f"split** (raygal.pipelines.split_of): scores on them flatter the model.", ""]
    lines += target_table(result["targets"])
    if result.get("targets_without_truth"):
        lines += ["", "No truth in the data for: " + ", ".join(result["targets_without_truth"])]
    if "oh12_detectability" in result:
        c = result["oh12_detectability"]
        lines += ["", f"Metallicity detectability classifier: accuracy {num(c['accuracy'])}, "
                      f"precision {num(c['precision'])}, recall {num(c['recall'])} "
                      f"(n = {c['n']})"]
    if "calibration" in result:
        lines += [""] + calibration_table(result)
    if "information" in result:
        lines += ["", "Information gain over the empirical prior: "
                  + information_line(result["information"])]
    if "prior" in result:
        lines += ["", prior_line(result["prior"])]
    if "baselines" in result:
        lines += [""] + baseline_table(result)
    if "populations" in result:
        lines += [""] + population_tables(result["populations"], list(result["targets"]))
    if "compare" in result:
        lines += [""] + compare_lines(result)
    return "\n".join(lines) + "\n"
