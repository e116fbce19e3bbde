"""StreamingBench (THUNLP-MT): its two public formats, its task groups and its official prompts.

- GitHub JSON: a list of entries {video_path, questions: [{task_type, question, time_stamp,
  options, answer, ground_truth_time_stamp?, ground_truth_output?}]}; the Sequential QA file nests
  the entries in one list per video.
- Hugging Face CSV: question_id, task_type, question, time_stamp, answer, options (a Python list
  as text), ...; the video is sample_N/video.mp4 with N the second-last part of question_id
  (a `video_path` column, where present, wins).
"""

from livesight.eval import formats
from livesight.eval.questions import (LETTERS, MAX_PROMPT_CHARS, Question, lettered, option_list, parse_options_text,
                                      parse_time, text)

BENCHMARK = "streamingbench"
GROUPS = {
    "Real-Time Visual Understanding": [
        "Object Perception", "Causal Reasoning", "Clips Summarize", "Attribute Perception", "Event Understanding",
        "Text-Rich Understanding", "Prospective Reasoning", "Spatial Understanding", "Action Perception", "Counting"],
    "Omni-Source Understanding": [
        "Emotion Recognition", "Scene Understanding", "Source Discrimination", "Multimodal Alignment"],
    "Contextual Understanding": [
        "Misleading Context Understanding", "Anomaly Context Understanding", "Sequential Question Answering",
        "Proactive Output"],
}
ALIASES = {"Object Recognition": "Object Perception", "Attribute Recognition": "Attribute Perception",
           "Clips Summarization": "Clips Summarize", "Clip Summarization": "Clips Summarize"}
ABBREVIATIONS = {"OP": "Object Perception", "CR": "Causal Reasoning", "CS": "Clips Summarize",
                 "ATP": "Attribute Perception", "EU": "Event Understanding", "TR": "Text-Rich Understanding",
                 "PR": "Prospective Reasoning", "SU": "Spatial Understanding", "ACP": "Action Perception",
                 "CT": "Counting", "ER": "Emotion Recognition", "SCU": "Scene Understanding",
                 "SD": "Source Discrimination", "MA": "Multimodal Alignment",
                 "MCU": "Misleading Context Understanding", "ACU": "Anomaly Context Understanding",
                 "SQA": "Sequential Question Answering", "PO": "Proactive Output"}
GROUP_OF = {task: group for group, tasks in GROUPS.items() for task in tasks}

# The official prompts (src/benchmark/StreamingBench*.py), with the options joined by lines.
CHOICE = ("You are an advanced video question-answering AI assistant. You have been provided with some frames from "
          "the video and a multiple-choice question related to the video. Your task is to carefully analyze the "
          "video and provide the best answer to question, choosing from the four options provided. Respond with "
          "only the letter (A, B, C, or D) of the correct option.\n\nQuestion: {question}\n\nOptions:\n{options}"
          "\n\nThe best option is:")
SEQUENTIAL = ("You are an advanced video question-answering AI assistant. You have been provided with a video and a "
              "multiple-choice question related to the video. Your task is to carefully analyze the video and the "
              "provided context to answer the question, choosing from the four options provided. Respond with only "
              "the letter (A, B, C, or D) of the correct option.\n\n{context}\n\nHere is the question. Answer it "
              "and don't confuse it with the previous conversation.\nQuestion: {question}\n\nOptions:\n{options}"
              "\n\nThe best option is:")
OPEN = ("You are an advanced video question-answering AI assistant. You have been provided with a video and a "
        "question related to the video. Your task is to carefully analyze the video and provide the answer to the "
        "question. \n\nQuestion: {question}\n\n\nAnswer:")
PROACTIVE = ("You are an advanced image question-answering AI assistant. You have been provided with images and a "
             "question related to the images. Your task is to carefully analyze the images and provide the answer "
             "to the question. You need to carefully confirm whether the images content meet the conditions of the "
             "question, and then output the correct content.\n\nQuestion: {question}\n\nThe answer is:\n")
SQA_INTRO = ("Here are the contextual information related to the video. Please answer the questions based on the "
             "contextual information: ")


def task_name(raw: str) -> str:
    name = str(raw).strip()
    return ABBREVIATIONS.get(name.upper(), ALIASES.get(name, name))


def load(path: str) -> list[Question]:
    """Questions in file order; a malformed row becomes a Question with `error` set. InputError for
    a file that is not StreamingBench's (formats.read)."""
    contents = formats.read(path, BENCHMARK)
    rows = _csv_rows(contents.rows) if contents.format == "streamingbench-csv" else _json_rows(contents.rows)
    questions = [_question(row, video, qid, order) for order, (row, video, qid) in enumerate(rows)]
    _add_sequential_context(questions)
    return questions


def _json_rows(entries: list):
    seen: dict[str, int] = {}
    for entry in entries:
        video = entry.get("video_path") if isinstance(entry, dict) else None
        questions = entry.get("questions") if isinstance(entry, dict) else None
        key = video if isinstance(video, str) else ""
        for row in questions if isinstance(questions, list) else [None]:
            k = seen[key] = seen.get(key, -1) + 1
            yield row, video, f"{key}#{k}"


def _csv_rows(rows: list):
    for line, row in rows:
        qid = (row.get("question_id") or "").strip() or f"row{line}"
        video = (row.get("video_path") or "").strip()
        if not video:
            parts = qid.split("_")
            video = f"sample_{parts[-2]}/video.mp4" if len(parts) >= 2 and parts[-2].isdigit() else ""
        yield row, video, qid


def _question(row, video, qid: str, order: int) -> Question:
    base = dict(id=qid, order=order, benchmark=BENCHMARK, video="", task="?", group="?")
    try:
        if not isinstance(row, dict):
            raise ValueError("the entry holds no questions list" if row is None else "a question must be an object")
        base["video"] = text(video, "video_path")
        task = text(row.get("task_type"), "task_type")
        base.update(task=task_name(task) if task else "?", time_stamp=text(row.get("time_stamp"), "time_stamp"))
        base["group"] = GROUP_OF.get(base["task"], "Other")
        if not base["video"]:
            raise ValueError("no video: the row names none (video_path, or question_id ending in _N_k)")
        if not task:
            raise ValueError("no task_type")
        t = parse_time(row.get("time_stamp"))
        question = text(row.get("question"), "question")
        if not question:
            raise ValueError("empty question")
        answer = text(row.get("answer"), "answer")
        if base["task"] == "Proactive Output":
            gt_t = parse_time(row.get("ground_truth_time_stamp"))
            output = text(row.get("ground_truth_output"), "ground_truth_output")
            poll = f"{question} Is it the right time to output \"{output}\"? You can only answer yes or no."
            return Question(**base, kind="proactive", t=t, text=question, answer=output, gt_t=gt_t,
                            prompt=PROACTIVE.format(question=question), poll_prompt=PROACTIVE.format(question=poll))
        options = row.get("options")
        if isinstance(options, str):  # the CSV's cell (and some JSON files): a list written as text
            options = parse_options_text(options) if options.strip() else None
        if not options:
            return Question(**base, kind="open", t=t, text=question, prompt=OPEN.format(question=question),
                            answer=answer)
        options = lettered(option_list(options))
        letters = LETTERS[:len(options)]
        if not answer or answer[:1].upper() not in letters:
            raise ValueError(f"answer {answer!r} is not one of the option letters {letters}")
        return Question(**base, kind="choice", t=t, text=question, options=options, answer=answer[:1].upper(),
                        letters=letters, prompt=CHOICE.format(question=question, options="\n".join(options)),
                        strict="first")
    except (ValueError, SyntaxError, TypeError, OverflowError) as err:
        return Question(**base, kind="choice", t=0.0, error=f"malformed row: {str(err).splitlines()[0]}")


def _add_sequential_context(questions: list[Question]) -> None:
    """Sequential QA: each question carries the earlier ones of its video, with their right answers
    (the official protocol's context)."""
    by_video: dict[str, list[Question]] = {}
    for q in questions:
        if q.task == "Sequential Question Answering" and q.kind == "choice" and q.error is None:
            by_video.setdefault(q.video, []).append(q)
    for items in by_video.values():
        context, failed = "", None
        for q in sorted(items, key=lambda q: (q.t, q.order)):
            prompt = "" if failed else SEQUENTIAL.format(context=context, question=q.text, options="\n".join(q.options))
            if failed or len(prompt) > MAX_PROMPT_CHARS:  # the context only grows: every later question fails too
                failed = failed or (f"malformed row: with the Sequential QA context before it, its prompt is longer "
                                    f"than {MAX_PROMPT_CHARS:,} characters")
                q.prompt, q.error = "", failed
                continue
            q.prompt = prompt
            context = (context or SQA_INTRO) + (f"At timestamp {q.time_stamp}, the following question and answer "
                                                f"occurred: Question: {q.text}; Options: {', '.join(q.options)}; "
                                                f"Answer: {q.answer}; ")
