"""Writers for long-context datasets (LEval, LongBench, NeedleBench) and Hugging Face loading-script
directories (LongBench, LiveCodeBench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import QA, WRITERS, path_in, write_jsonl, writer

# -- LEval: one JSON line per document, its questions and answers as parallel lists ----------------------------

def _leval(dcfg: Any, root: Path) -> None:
    exam = "/Exam/" in dcfg["path"]
    if dcfg["path"].endswith("topic_retrieval_longchat.jsonl"):
        outputs = ["The first topic was cats.", "The second topic was dogs."]
    elif dcfg["path"].endswith("quality.jsonl"):
        outputs = ["(A)", "(B)"]  # its loader keeps answer[1], the letter
    elif exam:
        outputs = ["A", "B"] if "gsm100" not in dcfg["path"] else ["The answer is 5", "The answer is 9"]
    else:
        outputs = ["The cat sat on the mat.", "It rained all day."]
    write_jsonl(path_in(dcfg, root), [{"input": "A long document about cats, dogs and the weather.",
                              "instructions": ["What is the first thing?", "What is the second thing?"],
                              "outputs": outputs, "source": "made-up", "evaluation": "exam" if exam else "f1"}])


for _name in ("CodeU", "Coursera", "FinancialQA", "GovReportSumm", "GSM100", "LegalContractQA", "MeetingSumm",
              "MultidocQA", "NarrativeQA", "NaturalQuestion", "NewsSumm", "PaperAssistant", "PatentSumm", "Quality",
              "ReviewSumm", "ScientificQA", "SciFi", "TopicRetrieval", "TPO", "TVShowSumm"):
    WRITERS[f"LEval{_name}Dataset"] = _leval


# -- LongBench: a Hugging Face data directory, one config (subset) per task --------------------------------------

def _longbench(dcfg: Any, root: Path) -> None:
    """`load_dataset(path=DIR, name=TASK, data_dir=DIR)`: THUDM/LongBench's layout, a loading script beside
    the data (with an absolute data_dir, `datasets` accepts only a script directory)."""
    directory = path_in(dcfg, root, "LongBench.py").parent
    name = dcfg["name"]
    classes = ["cat", "dog"]
    rows = [{"input": q, "context": f"Passage 1: {q} It is {a}.", "answers": [a], "length": 10,
             "dataset": name, "language": "en", "all_classes": classes, "_id": str(i)}
            for i, (q, a) in enumerate(QA[:4])]
    if name in ("trec", "lsht"):
        for i, row in enumerate(rows):
            row["answers"] = [classes[i % 2]]
    elif name.startswith("passage_retrieval"):  # the evaluator reads the paragraph number out of the answer
        for i, row in enumerate(rows):
            row["answers"] = [f"Paragraph {i + 1}" if name.endswith("_en") else f"段落{i + 1}"]
    elif name == "passage_count":
        for i, row in enumerate(rows):
            row["answers"] = [str(i + 1)]
    write_jsonl(directory / "data" / f"{name}.jsonl", rows)
    (directory / "LongBench.py").write_text(_LONGBENCH_SCRIPT, encoding="utf-8")


_LONGBENCH_SCRIPT = '''"""LongBench's loading script, reduced: one config per task, data/<task>.jsonl."""
import json
import os

import datasets

_FEATURES = datasets.Features({
    "input": datasets.Value("string"), "context": datasets.Value("string"),
    "answers": [datasets.Value("string")], "length": datasets.Value("int32"),
    "dataset": datasets.Value("string"), "language": datasets.Value("string"),
    "all_classes": [datasets.Value("string")], "_id": datasets.Value("string"),
})


class LongBench(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIGS = [datasets.BuilderConfig(name=n) for n in (
        "2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "multifieldqa_zh", "narrativeqa", "qasper",
        "triviaqa", "gov_report", "qmsum", "vcsum", "dureader", "lcc", "repobench-p", "passage_retrieval_en",
        "passage_retrieval_zh", "passage_count", "trec", "lsht", "multi_news", "samsum")]

    def _info(self):
        return datasets.DatasetInfo(features=_FEATURES)

    def _split_generators(self, dl_manager):
        path = os.path.join(self.config.data_dir, "data", f"{self.config.name}.jsonl")
        return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"path": path})]

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                yield i, json.loads(line)
'''


for _name in ("2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "multifieldqa_zh", "narrativeqa", "qasper",
              "triviaqa", "gov_report", "qmsum", "vcsum", "dureader", "lcc", "repobench", "passage_retrieval_en",
              "passage_retrieval_zh", "passage_count", "trec", "lsht", "multi_news", "samsum"):
    WRITERS[f"LongBench{_name}Dataset"] = _longbench


# -- NeedleBench ATC: a names file the loader builds family-tree puzzles from ---------------------------------

@writer("NeedleBenchATCDataset")
def _needlebench_atc(dcfg: Any, root: Path) -> None:
    names = ",".join(f"Name{i}" for i in range(60))
    path = path_in(dcfg, root, dcfg["file_name"])
    path.write_text(json.dumps({"English": names, "Chinese": names}), encoding="utf-8")


# -- LiveCodeBench: a Hugging Face dataset directory with its loading script (version_tag picks the files) -------

@writer("LCBCodeGenerationDataset")
def _livecodebench(dcfg: Any, root: Path) -> None:
    directory = path_in(dcfg, root, "code_generation_lite.py").parent
    tests = json.dumps([{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}])
    rows = [{"question_title": f"Add {i}", "question_content": "Read two integers and print their sum.",
             "platform": "made-up", "question_id": f"q{i}", "contest_id": "c0", "contest_date": "2025-01-01T00:00:00",
             "starter_code": "", "difficulty": "easy", "public_test_cases": tests, "private_test_cases": tests,
             "metadata": json.dumps({})} for i in range(2)]
    write_jsonl(directory / "test.jsonl", rows)
    (directory / "code_generation_lite.py").write_text(_LCB_SCRIPT, encoding="utf-8")


_LCB_SCRIPT = '''"""livecodebench/code_generation_lite's loading script, reduced: every version_tag reads test.jsonl."""
import json
import os

import datasets


class LCBConfig(datasets.BuilderConfig):
    def __init__(self, version_tag="release_v1", **kwargs):
        super().__init__(name=version_tag, **kwargs)
        self.version_tag = version_tag


class CodeGenerationLite(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = LCBConfig

    def _info(self):
        return datasets.DatasetInfo(features=datasets.Features(
            {k: datasets.Value("string") for k in (
                "question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
                "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")}))

    def _split_generators(self, dl_manager):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test.jsonl")
        if not os.path.exists(path):
            path = os.path.join(self.base_path or "", "test.jsonl")
        return [datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"path": path})]

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                yield i, json.loads(line)
'''


# -- NeedleBench: haystack texts, needles and names in one directory; the loaders build the long prompts --------

@writer("NeedleBenchOriginDataset", "NeedleBenchParallelDataset", "NeedleBenchMultiDataset")
def _needlebench(dcfg: Any, root: Path) -> None:
    """Every file the three loaders read (haystacks in `file_list`, `needle_file_name`). Their prompts are
    counted in tiktoken's gpt-4 tokens: see check.offline_tiktoken()."""
    directory = path_in(dcfg, root, "needles.jsonl").parent
    haystack = [{"text": f"Paragraph {i} of a long and quiet essay about gardens and rivers."} for i in range(20)]
    for name in ("PaulGrahamEssays.jsonl", "zh_finance.jsonl", "zh_game.jsonl", "zh_general.jsonl",
                 "zh_government.jsonl", "zh_movie.jsonl", "zh_tech.jsonl", "en_un_asr.jsonl", "zh_all.jsonl"):
        write_jsonl(directory / name, haystack)
    needles = [{"language": language, "needle": f"The secret number {i} is {100 + i}.",
                # The parallel loader cuts the answer format out of the quotes.
                "retrieval_question": f"What is the secret number {i}? Answer in the format of "
                                      f"'The secret number {i} is ______.'",
                "arg1": f"number {i}", "arg2": str(100 + i)}
               for language in ("English", "Chinese") for i in range(30)]
    write_jsonl(directory / "needles.jsonl", needles)
    names = ",".join(f"Name{i}" for i in range(60))
    (directory / "names.json").write_text(json.dumps({"English": names, "Chinese": names}), encoding="utf-8")
