"""Writers for the multiple-choice sets AISBench scores by perplexity (PPL configs): FewCLUE's JSON files read
through Hugging Face `datasets`, PIQA's split-and-labels directory. Rows are invented, in each loader's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import QA, write_jsonl, writer


def _data_files(dcfg: Any, root: Path) -> Path:
    """Where `load_dataset("json", data_files=...)` reads: the config's `data_files` under the data dir."""
    return root / dcfg["data_files"]


def _labels(dcfg: Any) -> list[Any]:
    """The answer labels: the PPL template's keys (what the retriever's get_labels returns)."""
    return list(dcfg["infer_cfg"]["prompt_template"]["template"].keys())


@writer("HFDataset")
def _hf_json(dcfg: Any, root: Path) -> None:
    """FewCLUE bustm / eprstmt: one JSON object per line with the reader's columns, the answer one of the labels."""
    reader = dcfg["reader_cfg"]
    columns = reader["input_columns"] if isinstance(reader["input_columns"], list) else [reader["input_columns"]]
    labels = _labels(dcfg)
    rows = [{**{c: f"{q} ({c})" for c in columns}, reader["output_column"]: labels[i % len(labels)]}
            for i, (q, _) in enumerate(QA)]
    write_jsonl(_data_files(dcfg, root), rows)


@writer("CHIDDataset")
def _chid(dcfg: Any, root: Path) -> None:
    write_jsonl(_data_files(dcfg, root), [
        {"content": f"他做事总是#idiom#，第{i}次也一样。", "candidates": [f"成语{i}{j}" for j in range(7)], "answer": i % 7}
        for i in range(len(QA))])


@writer("CluewscDataset")
def _cluewsc(dcfg: Any, root: Path) -> None:
    # The loader puts span1 where the pronoun (span2, one character at span2_index) was.
    write_jsonl(_data_files(dcfg, root), [
        {"text": f"小明{i}说他会来。", "target": {"span1_index": 0, "span1_text": "小明", "span2_index": 4 if i > 9 else 3,
                                            "span2_text": "他"}, "label": ["true", "false"][i % 2]}
        for i in range(len(QA))])


@writer("CslDataset")
def _csl(dcfg: Any, root: Path) -> None:
    write_jsonl(_data_files(dcfg, root), [
        {"abst": f"本文研究第{i}个问题。", "keyword": ["问题", f"研究{i}"], "label": str(i % 2)} for i in range(len(QA))])


@writer("TNewsDataset")
def _tnews(dcfg: Any, root: Path) -> None:
    # label_desc is one of the loader's own keys; it maps each to the Chinese label the templates use.
    kinds = ["news_agriculture", "news_travel", "news_game", "news_tech", "news_sports"]
    write_jsonl(_data_files(dcfg, root), [
        {"sentence": f"第{i}条新闻", "label_desc": kinds[i % len(kinds)], "label": str(100 + i % len(kinds))}
        for i in range(len(QA))])


@writer("PIQADataset")
def _piqa(dcfg: Any, root: Path) -> None:
    directory = root / dcfg["path"]
    rows = [{"id": f"q{i}", "goal": q, "sol1": f"say {a}", "sol2": f"say {int(a) + 1}"} for i, (q, a) in enumerate(QA)]
    for split in ("train", "dev"):
        write_jsonl(directory / f"{split}.jsonl", rows)
        (directory / f"{split}-labels.lst").write_text("".join(f"{i % 2}\n" for i in range(len(rows))))
