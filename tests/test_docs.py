"""The README and docs/ hold to the code: the variant and objective tables name exactly the
registries' names; the suite in ten lines plans the runs it says; the README's code for a new
variant and a new objective registers, trains through the harness, and the objective computes
the bound it claims (Rényi's, between the ELBO and the IWAE bound of the same draws); every
relative link of the README and docs/ points at a file that exists."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

import variants
from bench import config, objectives, train
from bench import data as datasets
from bench.objectives.basic import logmeanexp
from bench.suite import load_suite
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str, text: str = README) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _first_column(section: str, head: str) -> list[str]:
    """The backticked names of the first column of the table whose header row starts with ``| head |``."""
    table = section.split(f"| {head} |", 1)[1].split("\n\n", 1)[0]
    return [n for line in table.splitlines()[2:] for n in re.findall(r"`([^`]+)`", line.split("|")[1])]


@pytest.mark.parametrize("doc", ["README.md", "docs/models.md"])
def test_the_tables_name_the_registries(doc):
    section = _section("Variants and objectives", (ROOT / doc).read_text())
    listed_variants = _first_column(section, "variant")
    listed_objectives = _first_column(section, "objective")
    assert len(listed_variants) == len(set(listed_variants)) and len(listed_objectives) == len(set(listed_objectives))
    assert sorted(listed_variants) == variants.available()
    assert sorted(listed_objectives) == objectives.available()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_the_suite_in_ten_lines_plans_what_it_says(tmp_path):
    toml, search = _blocks("toml")
    path = tmp_path / "my_suite.toml"
    path.write_text(toml)
    suite = load_suite(str(path))
    assert suite.name == "my_suite"
    assert [(r.variant, r.objective, r.dataset, r.seed) for r in suite.runs] == [
        ("vanilla", o, "digits", s) for s in (0, 1, 2) for o in ("elbo", "iwae", "dreg")]
    assert {(r.epochs, r.latent_dim, tuple(r.hidden), r.eval_k, r.k) for r in suite.runs} == {(30, 8, (64, 64), 500, 5)}
    # the [search] table of "On equal terms", added to that suite (whose grid then loses its seeds)
    path.write_text(toml.replace("seeds = [0, 1, 2]\n", "") + "\n" + search)
    spec = load_suite(str(path)).search
    assert (spec.metric, spec.sampler, spec.pruner, spec.trials, spec.final_seeds) == (
        "val/elbo", "grid", "successive-halving", 4, [0, 1, 2])


@pytest.fixture
def readme_code(monkeypatch):
    """The README's variant and objective, registered for one test (the registries restored after)."""
    from bench.objectives import registry as objective_registry
    from variants import registry as variant_registry

    for registry in (variant_registry, objective_registry):  # the dict and the plugins' record of it
        fresh = dict(registry._REGISTRY)
        monkeypatch.setattr(registry, "_REGISTRY", fresh)
        monkeypatch.setattr(registry.PROVENANCE, "registry", fresh)
        monkeypatch.setattr(registry.PROVENANCE, "sources", dict(registry.PROVENANCE.sources))
    namespace: dict = {}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_variant_and_objective_register_and_train(readme_code):
    assert "linear-decoder" in variants.available() and "vr-half" in objectives.available()
    assert objectives.applies_to("vr-half", variants.get("linear-decoder"))
    # the command the README gives plans the new variant's run in the smoke suite
    assert [r.variant for r in load_suite("smoke", {"variants": ["linear-decoder"]}).runs] == ["linear-decoder"]
    cfg = config.RunConfig(variant="linear-decoder", objective="vr-half", k=5, epochs=2, batch_size=100, latent_dim=2,
                           hidden=[8], train_size=200, test_size=20, val_k=2, eval_k=8, gap_epochs=[], grad_epochs=[],
                           threads=1)
    result = train.run(cfg, datasets.load("digits"), lambda m, step: None)
    assert [s for s, _ in result.history["val/elbo"]] == [1, 2]
    assert all(math.isfinite(result.final[m]) for m in ("test/elbo", "test/log_px"))
    assert result.final["test/log_px"] >= result.final["test/elbo"] - 0.5  # the IWAE estimate above the ELBO
    assert [s for s, _ in result.history["train/loss"]] == [1, 2]


def test_the_readme_objective_is_renyis_bound(readme_code):
    """Known answers on the same draws: the VR bound at alpha lies between the ELBO (mean of log w)
    and the IWAE bound (logmeanexp of log w), strictly for a nondegenerate q, reaches the IWAE bound
    at alpha = 0 and the ELBO as alpha -> 1."""
    vr = readme_code["vr_half"]
    torch.manual_seed(0)  # float64: the limit alpha -> 1 divides by 1 - alpha
    model = variants.build("linear-decoder", x_shape=(1, 8, 8), latent_dim=3, hidden=(16,)).double()
    x = torch.bernoulli(torch.full((6, 64), 0.3, dtype=torch.float64))

    def at(seed, **kw):
        torch.manual_seed(seed)
        return vr(model, x, 8, **kw).value

    torch.manual_seed(1)
    log_w = model.terms(x, 8, mode="reparam").log_w.detach()
    elbo, iwae = log_w.mean(0), logmeanexp(log_w, 0)
    half = at(1)
    assert (elbo < half - 1e-4).all() and (half < iwae - 1e-4).all()  # power: strictly inside
    torch.testing.assert_close(at(1, alpha=0.0), iwae, rtol=0, atol=1e-10)
    # L_alpha = ELBO + (1 - alpha) Var_j(log w_j) / 2 + O((1 - alpha)^2)
    torch.testing.assert_close(at(1, alpha=1 - 1e-6), elbo + 0.5e-6 * log_w.var(0, unbiased=False), rtol=0, atol=1e-9)
    assert not torch.allclose(at(2), half)  # another seed, other draws


# files that other work provides (the plugins and optimizers documentation); drop once present
PROVIDED_ELSEWHERE: set[str] = set()


def _links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (``file``, ``file#anchor`` or ``#anchor``),
    outside code."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`(?!\])", "", text)  # inline code, but not a link's backticked text
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _broken(path: Path) -> list[str]:
    out = []
    for link in _links(path):
        file, _, anchor = link.partition("#")
        target = path.parent / file if file else path
        if not target.exists():
            if os.path.relpath(os.path.normpath(target), ROOT) not in PROVIDED_ELSEWHERE:
                out.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            out.append(link)
    return out


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_point_at_files_and_headings(doc):
    broken = _broken(ROOT / doc)
    assert not broken, f"{doc}: links to missing files or headings: {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page, `with` code\n[a](missing.md) [b](https://example.org) [c](#anchor) `[d](code.md)`\n"
                    "[e](#a-page-with-code) [f](page.md#a-page-with-code) [g](page.md#nowhere)\n```\n[h](x.md)\n```\n")
    assert _links(page) == ["missing.md", "#anchor", "#a-page-with-code", "page.md#a-page-with-code", "page.md#nowhere"]
    assert _broken(page) == ["missing.md", "#anchor", "page.md#nowhere"]
