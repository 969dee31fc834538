"""The saved speaking model and `pipeline("text-to-speech")`, with the package and through remote code.

Tiny random parts (a 2-layer MoLE on the real SmolLM2 tokenizer, a tiny acoustic LM and codec): the audio is
noise, but every path from text to waveform is the real one.
"""

import json
import subprocess
import sys
import textwrap
import threading

import greenlet
import numpy as np
import pytest
import torch
from test_remote_code import BLOCK_MOLE_LLAMA
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from conftest import TINY_LLAMA
from mole_llama import MoLELlamaConfig, MoLELlamaForCausalLM
from mole_llama.conversion.tts_bundle import save_tts_model
from mole_llama.embedded.base import embedded_base_path
from mole_llama.modeling.configuration_acoustic_lm import AcousticLMConfig
from mole_llama.modeling.configuration_mel_codec import MelCodecConfig
from mole_llama.modeling.float16_weights import fbgemm_engine
from mole_llama.modeling.modeling_acoustic_lm import AcousticLMForConditionalGeneration
from mole_llama.modeling.modeling_mel_codec import MelCodecModel
from mole_llama.modeling.modeling_tts_llama import split_text
from mole_llama.modeling.speech_units import add_speech_tokens

pytestmark = pytest.mark.slow  # uses the real SmolLM2 tokenizer (and its chat template)
UNITS = 16


@pytest.fixture(scope="module")
def tts_dir(tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    add_speech_tokens(tokenizer, UNITS)
    torch.manual_seed(0)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    config = MoLELlamaConfig(
        **{**TINY_LLAMA, **special, "vocab_size": len(tokenizer)},
        tie_word_embeddings=True,
        experts=[{"name": "speech", "r": 4}],
        routing="speech",
    )
    llm = MoLELlamaForCausalLM(config).eval()
    codec = MelCodecModel(MelCodecConfig(hidden_size=16, num_residual_layers=1, codebook_dim=8, num_codebooks=2,
                                         codebook_size=16, griffin_lim_iterations=4)).eval()  # fmt: skip
    acoustic_lm = AcousticLMForConditionalGeneration(
        AcousticLMConfig(
            num_semantic_units=UNITS,
            num_codebooks=2,
            codebook_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )  # fmt: skip
    ).eval()
    folder = tmp_path_factory.mktemp("tts")
    return save_tts_model(folder, llm, tokenizer, acoustic_lm, codec, UNITS, max_new_tokens=12)


def test_saved_layout(tts_dir):
    config = json.loads((tts_dir / "config.json").read_text())
    assert {"AutoModelForCausalLM", "AutoModelForTextToWaveform"} <= set(config["auto_map"])
    assert config["sampling_rate"] == 16000 and config["num_speech_units"] == UNITS
    for part in ("acoustic_lm", "codec"):
        assert (tts_dir / part / "model.safetensors").is_file()
    assert not list(tts_dir.rglob("*.bin"))
    assert not (tts_dir / "adapter_config.json").exists()


def test_pipeline_speaks_in_the_text_to_audio_format(tts_dir):
    speaker = pipeline("text-to-speech", model=str(tts_dir))
    output = speaker("Hello there. How are you today?", generate_kwargs={"do_sample": True, "seed": 3})
    assert set(output) == {"audio", "sampling_rate"} and output["sampling_rate"] == 16000
    audio = output["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) > 0 and np.abs(audio).max() <= 1.0
    outputs = speaker(["One.", "Two words."], generate_kwargs={"seed": 1})
    assert isinstance(outputs, list) and len(outputs) == 2
    assert AutoModelForCausalLM.from_pretrained(tts_dir).__class__ is MoLELlamaForCausalLM


def test_our_models_get_a_tts_llama_pipeline_with_its_extras(tts_dir, tmp_path):
    import soundfile

    from mole_llama import TTSLlamaPipeline

    speaker = pipeline("text-to-speech", model=str(tts_dir))
    assert type(speaker) is TTSLlamaPipeline
    t = np.arange(32000) / 16000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    soundfile.write(tmp_path / "voice.wav", stereo.astype(np.float32), 16000)
    by_file = speaker("Hello there.", voice=str(tmp_path / "voice.wav"), seed=2)
    by_array = speaker("Hello there.", generate_kwargs={"voice": (stereo.mean(axis=1), 16000), "seed": 2})
    np.testing.assert_allclose(by_file["audio"], by_array["audio"], atol=1e-4)  # the file is 16-bit PCM
    outputs = speaker(["One.", "Two words here."], seed=1, batch_size=2)
    assert [set(output) for output in outputs] == [{"audio", "sampling_rate"}] * 2
    chunks = list(speaker.stream("First one. Second one.", seed=4))
    assert len(chunks) >= 3 and all(chunk["sampling_rate"] == 16000 for chunk in chunks)  # 2 pieces, a pause
    joined = np.concatenate([chunk["audio"] for chunk in chunks])
    # the expected codebook vectors (on for the mel codec) are float sums, computed in windows while streaming
    np.testing.assert_allclose(joined, speaker("First one. Second one.", seed=4)["audio"], atol=1e-4)
    drawn = {"acoustic_expected_decoding": False}  # the drawn codes: the very same samples
    joined = np.concatenate([chunk["audio"] for chunk in speaker.stream("First one. Second one.", seed=4, **drawn)])
    np.testing.assert_array_equal(joined, speaker("First one. Second one.", seed=4, **drawn)["audio"])
    for bad, message in (([], "non-empty list"), ([3], "strings"), ("Hi.", "batch_size=0")):
        with pytest.raises(ValueError, match=message):
            speaker(bad, batch_size=0) if bad == "Hi." else speaker(bad)
    with pytest.raises(ValueError, match="unknown generation setting.*spede"):
        speaker("Hi.", spede=2.0)


def _stock_audio(model, tokenizer, text, named_class):
    from transformers import set_seed

    speaker = pipeline("text-to-speech", model=model, tokenizer=tokenizer, pipeline_class=named_class)
    set_seed(0)
    return type(speaker), speaker(text, forward_params={"max_new_tokens": 6} if model.can_generate() else {})


def test_other_text_to_audio_models_get_the_stock_pipeline_and_the_same_audio():
    """Importing mole_llama changes nothing for other models: a tiny VITS (forward) and a tiny MusicGen (generate)
    get the stock class and, for the same seed, the very audio the stock class gives when named explicitly."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
        TextToAudioPipeline,
        VitsConfig,
        VitsModel,
    )

    tokenizer = AutoTokenizer.from_pretrained(embedded_base_path())
    torch.manual_seed(0)
    vits = VitsModel(VitsConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                ffn_dim=16, flow_size=8, spectrogram_bins=17, upsample_initial_channel=8,
                                upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3],
                                resblock_dilation_sizes=[[1]], prior_encoder_num_flows=1,
                                posterior_encoder_num_wavenet_layers=1,
                                duration_predictor_filter_channels=8, depth_separable_num_layers=1,
                                prior_encoder_num_wavenet_layers=1)).eval()  # fmt: skip
    musicgen = MusicgenForConditionalGeneration(MusicgenConfig(
        text_encoder=T5Config(vocab_size=len(tokenizer), d_model=8, d_ff=16, d_kv=4, num_layers=1, num_heads=2),
        audio_encoder=EncodecConfig(codebook_size=16, hidden_size=8, num_filters=2, target_bandwidths=[1.5]),
        decoder=MusicgenDecoderConfig(vocab_size=16, hidden_size=8, ffn_dim=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_codebooks=2, pad_token_id=16, bos_token_id=16),
    )).eval()  # fmt: skip
    for model in (vits, musicgen):
        default_class, default = _stock_audio(model, tokenizer, "Hello there.", None)
        named_class, named = _stock_audio(model, tokenizer, "Hello there.", TextToAudioPipeline)
        assert default_class is named_class is TextToAudioPipeline
        np.testing.assert_array_equal(default["audio"], named["audio"])
        assert default["sampling_rate"] == named["sampling_rate"]


def test_remote_code_gives_the_same_audio(tts_dir, tmp_path):
    text = "The sun is warm today."
    script = BLOCK_MOLE_LLAMA + textwrap.dedent(
        f"""
        import numpy as np
        import torch
        from transformers import pipeline
        torch.set_num_threads({torch.get_num_threads()})  # float sums split by thread round differently
        speaker = pipeline("text-to-speech", model={str(tts_dir)!r}, trust_remote_code=True)
        out = speaker({text!r}, generate_kwargs={{"seed": 5}})
        np.save({str(tmp_path / "audio.npy")!r}, out["audio"])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    local = pipeline("text-to-speech", model=str(tts_dir))(text, generate_kwargs={"seed": 5})["audio"]
    np.testing.assert_array_equal(np.load(tmp_path / "audio.npy"), local)


def test_voice_prompt_and_bad_input(tts_dir):
    speaker = pipeline("text-to-speech", model=str(tts_dir))
    t = np.arange(32000) / 16000
    voice = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    output = speaker("Hello.", generate_kwargs={"voice": (voice, 16000), "seed": 0})
    assert output["audio"].ndim == 1
    with pytest.raises(ValueError, match="at least 1.0 s"):
        speaker("Hello.", generate_kwargs={"voice": (voice[:4000], 16000)})
    with pytest.raises(ValueError, match="silent"):
        speaker("Hello.", generate_kwargs={"voice": (np.zeros(32000, np.float32), 16000)})
    with pytest.raises(ValueError, match="text is empty"):
        speaker.model.speak("   ")
    with pytest.raises(ValueError, match="sampling rate is 0"):
        speaker.model.voice_prompt((voice, 0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        speaker.model.voice_prompt((np.full(32000, np.nan, np.float32), 16000))


def test_stereo_voice_is_mixed_down_in_either_layout(tts_dir):
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    t = np.arange(32000) / 16000
    left = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    right = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    mono = model.voice_prompt(((left + right) / 2, 16000))
    stereo = np.stack([left, right])
    assert torch.equal(model.voice_prompt((stereo.T, 16000)), mono)  # (samples, channels)
    assert torch.equal(model.voice_prompt((stereo, 16000)), mono)  # (channels, samples)


def test_long_text_is_split_into_short_pieces():
    text = "First sentence here. " + " ".join(["word"] * 70) + ". Last one!"
    pieces = split_text(text)
    assert pieces[0] == "First sentence here." and pieces[-1] == "Last one!"
    assert [len(piece.split()) for piece in pieces[1:-1]] == [12, 12, 12, 12, 12, 10]  # 70 words in six parts
    assert " ".join(pieces).split() == text.split()
    clauses = "When the going gets tough, the tough get going, and then they stop, because they are tired of it."
    assert split_text(clauses) == ["When the going gets tough, the tough get going,",
                                   "and then they stop, because they are tired of it."]  # fmt: skip
    assert split_text("Short, with a comma.") == ["Short, with a comma."]  # a short sentence stays whole


def test_a_model_that_speaks_collapsed_units_times_them_with_its_duration_predictor(tts_dir, tmp_path):
    from mole_llama.modeling.configuration_duration_predictor import DurationPredictorConfig
    from mole_llama.modeling.modeling_duration_predictor import DurationPredictorModel
    from mole_llama.modeling.speech_units import UNITS_CAP_MARGIN, UNITS_PER_CHARACTER_CAP

    model = pipeline("text-to-speech", model=str(tts_dir)).model
    torch.manual_seed(0)
    model.duration_predictor = DurationPredictorModel(
        DurationPredictorConfig(num_units=UNITS, hidden_size=8, num_layers=1)
    ).eval()
    model.save_pretrained(tmp_path / "collapsed")
    assert (tmp_path / "collapsed" / "duration_predictor" / "model.safetensors").is_file()
    loaded = pipeline("text-to-speech", model=str(tmp_path / "collapsed")).model
    units = [3, 7, 3]
    durations = loaded.duration_predictor.predict(units)
    assert loaded.units_to_frames(units) == [u for u, d in zip(units, durations) for _ in range(d)]
    assert sum(durations) < sum(loaded.duration_predictor.predict(units, speed=0.5))
    # A random LLM rarely ends its segment: the text-length cap stops it, not max_new_tokens.
    text = "Hi there."
    assert len(loaded.speech_units(text)) <= int(UNITS_PER_CHARACTER_CAP * len(text)) + UNITS_CAP_MARGIN


def _never_called(*args, **kwargs):
    raise AssertionError("the LLM ran although the request was out of range")


def test_caps_out_of_range_are_refused_before_the_llm_runs(tts_dir, monkeypatch):
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    monkeypatch.setattr(model, "speech_units_batch", _never_called)
    for bad in (0, -3, 10**6, 1.5, "12", True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.speak("Hello there.", max_new_tokens=bad)
    # a voice prompt that leaves no room in the acoustic LM's positions for the piece's frames
    monkeypatch.setattr(model.acoustic_lm.config, "max_position_embeddings", 64)
    prompt = torch.zeros(2, 60, dtype=torch.long)  # (codebooks, frames)
    with pytest.raises(ValueError, match="shorter voice prompt"):
        model.speak("Hello there.", prompt)


def test_runaway_durations_are_cut_at_the_text_frame_cap(tts_dir, caplog):
    from mole_llama.modeling.configuration_duration_predictor import DurationPredictorConfig
    from mole_llama.modeling.modeling_duration_predictor import DurationPredictorModel

    model = pipeline("text-to-speech", model=str(tts_dir)).model
    predictor = DurationPredictorModel(DurationPredictorConfig(num_units=UNITS, hidden_size=8, num_layers=1)).eval()
    for parameter in predictor.parameters():  # every unit predicted to last max_duration frames
        torch.nn.init.zeros_(parameter)
    torch.nn.init.constant_(predictor.head.bias, 10.0)
    model.duration_predictor = predictor
    text = "Hi."
    assert len(model.units_to_frames([1, 2, 3])) == 3 * predictor.config.max_duration
    cap = model.frame_cap(text)
    with caplog.at_level("WARNING"):
        audio = model.speak(text, max_new_tokens=6)
    assert "cut at" in caplog.text
    codec = model.codec
    samples_per_frame = codec.sampling_rate / model.acoustic_lm.config.acoustic_frame_rate
    assert len(audio) == pytest.approx(cap * samples_per_frame, rel=0.05)
    assert model.frame_cap(text, speed=0.5) == 2 * cap
    model.duration_predictor = None


def test_a_long_text_is_spoken_piece_by_piece_with_a_progress_bar(tts_dir, capsys):
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    sentence = "The quick brown fox jumps over the lazy dog."
    torch.manual_seed(0)
    short = model.speak(sentence)
    capsys.readouterr()
    text = " ".join([sentence] * 8)
    assert split_text(text) == [sentence] * 8
    torch.manual_seed(0)
    audio = model.speak(text)
    assert "speaking" in capsys.readouterr().err
    pause = int(0.15 * model.sampling_rate)
    assert len(audio) == pytest.approx(8 * len(short) + 7 * pause, rel=0.5)


def test_streamed_chunks_join_into_the_generated_audio(tts_dir):
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    tokenizer = model.tokenizer
    text = "One short sentence. And a second one! A third?"
    chunks = list(model.stream(text, seed=3))
    assert len(chunks) >= 5  # three pieces and the two pauses between them
    whole = model.generate(tokenizer(text, return_tensors="pt").input_ids, seed=3)["audio"][0]
    # the expected codebook vectors are float sums of distributions computed in windows: equal to float rounding
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=0, atol=1e-4)
    drawn = {"acoustic_expected_decoding": False}  # decoding the drawn codes: the very same samples
    chunks = list(model.stream(text, seed=3, **drawn))
    whole = model.generate(tokenizer(text, return_tensors="pt").input_ids, seed=3, **drawn)["audio"][0]
    assert torch.equal(torch.cat(chunks), whole)


def test_speaking_runs_in_inference_mode_and_returns_ordinary_tensors(tts_dir):
    """Inference mode inside (the LLM and the acoustic LM see it), ordinary tensors outside: the caller may change
    the audio in place, which PyTorch refuses for an inference tensor."""
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    modes = []
    for part in (model.model, model.acoustic_lm):
        part.register_forward_hook(lambda *_: modes.append(torch.is_inference_mode_enabled()))
    ids = model.tokenizer(["One short sentence.", "Two"], return_tensors="pt", padding=True)
    outputs = [
        model.speak("One short sentence.", seed=0),
        *model.speak_texts(["Two"], seed=0),
        *model.stream("One. Two.", seed=0),
        *model.generate(**ids, seed=0)["audio"],
        model.voice_prompt(np.sin(np.arange(16000, dtype=np.float32) / 5)),
    ]
    assert modes and all(modes) and not torch.is_inference_mode_enabled()
    for output in outputs:
        assert not output.is_inference()
        output.mul_(1)  # raises for an inference tensor
    wave = torch.randn(8000, requires_grad=True)  # what speaking cached (the mel constants) can serve autograd
    model.codec.features(wave).sum().backward()
    assert wave.grad is not None


def test_a_stream_generates_on_the_callers_thread_and_stops_when_dropped(tts_dir, monkeypatch):
    """The LLM generates in a greenlet on the consumer's thread (PyTorch ran ~1.7x slower from a worker thread);
    closing the stream ends the piece's generation where it waits, and no later piece starts."""
    from mole_llama.conversion.int8 import quantize_llm_int8

    model = pipeline("text-to-speech", model=str(tts_dir)).model
    generate_rows, threads_seen, ended = model.speech_token_rows, [], []

    def spy(*args, **kwargs):
        threads_seen.append(threading.get_ident())
        try:
            return generate_rows(*args, **kwargs)
        finally:
            ended.append(sys.exc_info()[0])

    monkeypatch.setattr(model, "speech_token_rows", spy)
    with torch.enable_grad():  # the consumer's grad mode is its own, generate's (no gradients) is generate's
        stream = model.stream("One short sentence. And a second one!", seed=3)
        assert len(next(stream)) and torch.is_grad_enabled()
        stream.close()
        assert torch.is_grad_enabled()
    assert threads_seen == [threading.get_ident()]  # one piece begun, on this thread
    assert ended in ([None], [greenlet.GreenletExit])  # it ran to its end, or was ended where it waited
    stream, errors = model.stream("One short sentence.", seed=3), []
    next(stream)
    elsewhere = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, next, stream)))
    elsewhere.start()
    elsewhere.join()
    assert "read a stream on one thread" in str(errors[0].value)
    quantize_llm_int8(model)
    chunks = list(model.stream("One short sentence.", seed=3))
    assert chunks and all(torch.isfinite(chunk).all() for chunk in chunks)


def test_a_codec_without_a_streaming_decoder_streams_whole_pieces(tts_dir, monkeypatch):
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    monkeypatch.setattr(model.codec, "decode_stream", None, raising=False)  # as EnCodec's adapter has none
    text = "One short sentence. And a second one!"
    chunks = list(model.stream(text, seed=3))
    assert len(chunks) == 3  # a piece, the pause, a piece
    torch.testing.assert_close(torch.cat(chunks), model.speak(text, seed=3), rtol=0, atol=1e-4)
    drawn = {"acoustic_expected_decoding": False}
    assert torch.equal(torch.cat(list(model.stream(text, seed=3, **drawn))), model.speak(text, seed=3, **drawn))


def test_the_mel_codec_decodes_expected_vectors_by_default(tts_dir, monkeypatch):
    assert json.loads((tts_dir / "generation_config.json").read_text())["acoustic_expected_decoding"] is True
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    expected = model.speak("Two words here.", seed=6)
    drawn = model.speak("Two words here.", seed=6, acoustic_expected_decoding=False)
    assert expected.shape == drawn.shape and (expected - drawn).abs().max() > 1e-3  # same frames, other vectors
    monkeypatch.setattr(model, "speech_units_batch", _never_called)
    monkeypatch.setattr(model.codec, "decode_expected", None, raising=False)  # as EnCodec's adapter has none
    with pytest.raises(ValueError, match="acoustic_expected_decoding=True needs a codec.*pass acoustic_expected"):
        model.speak("Two words here.", seed=6)


def test_unknown_or_out_of_range_generation_settings_are_refused(tts_dir, monkeypatch):
    speaker = pipeline("text-to-speech", model=str(tts_dir))
    monkeypatch.setattr(speaker.model, "speech_units_batch", _never_called)
    cases = [
        ({"temprature": 0.7}, "unknown generation setting.*temprature"),
        ({"num_beams": 4}, "unknown generation setting.*num_beams"),
        ({"top_p": 2}, "top_p=2"),
        ({"temperature": 0}, "temperature=0"),
        ({"top_k": 0}, "top_k=0"),
        ({"acoustic_top_k": 2.5}, "acoustic_top_k=2.5"),
        ({"do_sample": "yes"}, "do_sample='yes'"),
        ({"acoustic_expected_decoding": 1}, "acoustic_expected_decoding=1"),
        ({"speed": 1.2}, "need a model that times its units"),  # this tiny model speaks frame-level units
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=message):
            speaker("Hello there.", generate_kwargs=settings)


def test_speech_marker_strings_in_the_text_are_refused_not_dropped(tts_dir, monkeypatch):
    speaker = pipeline("text-to-speech", model=str(tts_dir))
    monkeypatch.setattr(speaker.model, "speech_units_batch", _never_called)
    for text in ("Hello <|speech_end|> world", "<|speech_3|> again", "and <|speech_start|>"):
        with pytest.raises(ValueError, match="speech tokens' names"):
            speaker(text)
        with pytest.raises(ValueError, match="speech token strings"):  # the stock pipeline's way in: token ids
            speaker.model.generate(speaker.tokenizer(text, return_tensors="pt").input_ids)


@pytest.mark.parametrize("float16", [False, True])
def test_a_batch_speaks_as_each_text_alone(tts_dir, float16):
    """Batched pieces (left-padded LLM generation, one acoustic LM pass) give what each text gets alone, with
    greedy units and each piece sampling from its own seed; with float16 weights too (a row's products do not
    depend on the batch's other rows)."""
    kwargs = {"merged_expert_cache": True, "float16_decoding": True} if float16 else {}
    model = pipeline("text-to-speech", model=str(tts_dir), model_kwargs=kwargs).model
    assert model.config.float16_decoding == float16
    if float16:
        model.acoustic_lm = AcousticLMForConditionalGeneration.from_pretrained(
            tts_dir / "acoustic_lm", float16_decoding=True
        ).eval()
    texts = ["Hello there.", "A somewhat longer sentence to read aloud. And one more.", "Yes!"]
    batched = model.speak_texts(texts, seed=7, batch_size=4)
    alone = [model.speak_texts([text], seed=7, batch_size=1)[0] for text in texts]
    for one, other in zip(batched, alone):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-5)
    units_batched = model.speech_units_batch(texts)
    assert units_batched == [model.speech_units_batch([text])[0] for text in texts]
    # digits and arithmetic are read as the words they stand for, with the caps of those words
    assert model.speech_units_batch(["13 + 14 = 27."]) == model.speech_units_batch(
        ["thirteen plus fourteen equals twenty seven."]
    )
    assert model.units_cap("13 + 14 = 27.") == model.units_cap("thirteen plus fourteen equals twenty seven.")


def test_the_speech_parts_are_children_that_follow_the_model(tts_dir, tmp_path):
    from safetensors import safe_open

    model = pipeline("text-to-speech", model=str(tts_dir)).model
    children = dict(model.named_children())
    assert {"acoustic_lm", "codec"} <= set(children)
    model.to(torch.bfloat16)
    for part in (model.acoustic_lm, model.codec):
        assert {parameter.dtype for parameter in part.parameters()} == {torch.bfloat16}
    audio = model.speak("Hello.", seed=0)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    model.to(torch.float32).save_pretrained(tmp_path / "again")
    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if key.split(".")[0] in ("acoustic_lm", "codec")]
    assert (tmp_path / "again" / "acoustic_lm" / "model.safetensors").is_file()


def test_speech_sampling_defaults_live_in_the_saved_generation_config(tts_dir):
    saved = json.loads((tts_dir / "generation_config.json").read_text())
    assert saved["acoustic_temperature"] == 0.4 and saved["acoustic_top_k"] == 10 and saved["acoustic_do_sample"]
    model = pipeline("text-to-speech", model=str(tts_dir)).model
    assert not torch.equal(model.speak("Hello.", seed=1), model.speak("Hello.", seed=2))  # sampled codes
    model.generation_config.acoustic_do_sample = False  # greedy codes (and greedy units): the seed no longer matters
    assert torch.equal(model.speak("Hello.", seed=1), model.speak("Hello.", seed=2))
    assert not torch.equal(model.speak("Hello.", seed=1), model.speak("Hello.", seed=1, acoustic_do_sample=True))


def test_spoken_answers_need_a_learned_router(tts_dir, tmp_path):
    from mole_llama.evaluation.evaluate import evaluate_speech

    with pytest.raises(ValueError, match="forces routing='speech': give a MoLE-Llama with its learned router"):
        evaluate_speech(tts_dir, None, tmp_path, qa={"known": []})  # refused before the corpus is read


@torch.no_grad()
@pytest.mark.parametrize("float16", [False, True])
def test_compiled_decoding_says_what_eager_steps_say_alone_batched_and_streamed(tts_dir, float16):
    """`compile_decoding` takes transformers' compiled route for the LLM's steps (a static cache and a
    `CompileConfig`) and compiles the acoustic LM's, for one piece at a time (with float16 weights, its rows
    multiply by plain float16 copies, FBGEMM's packed ones being opaque to a graph); a batch decodes eagerly. The
    greedy units of eager steps, alone and in a batch, and a stream that joins into `speak`'s audio."""
    kwargs = {"merged_expert_cache": True, "float16_decoding": True} if float16 else {}
    eager = pipeline("text-to-speech", model=str(tts_dir), model_kwargs=kwargs).model
    model = pipeline("text-to-speech", model=str(tts_dir), model_kwargs={**kwargs, "compile_decoding": True}).model
    texts = ["Hello there.", "A longer sentence to say."]
    assert [model.speech_units(text) for text in texts] == [eager.speech_units(text) for text in texts]
    assert hasattr(model, "_compiled_call")  # transformers compiled the LLM's decoding step
    if float16:
        kept = model.model.layers[0].self_attn.q_proj.merged_weight("speech")
        assert (kept.packed is not None) == fbgemm_engine() and kept.half is not None  # eager products, graphs
    assert model.speech_units_batch(texts) == eager.speech_units_batch(texts)
    drawn = {"acoustic_expected_decoding": False}
    assert torch.equal(torch.cat(list(model.stream(texts[1], seed=3, **drawn))), model.speak(texts[1], seed=3, **drawn))


def test_compile_decoding_needs_one_fixed_routing_and_float_weights(tts_dir):
    from mole_llama.conversion.int8 import quantize_llm_int8

    model = pipeline("text-to-speech", model=str(tts_dir)).model
    model.model.layers[0].routing = None  # as a MoLE-Llama's layers: their routers choose
    with pytest.raises(ValueError, match="compile_decoding needs one fixed routing"):
        model.compile_decoding()
    assert not model.decoding_compiled and model.acoustic_lm._compiled_frame_step is None
    int8 = quantize_llm_int8(pipeline("text-to-speech", model=str(tts_dir)).model)
    with pytest.raises(ValueError, match="int8-quantized"):
        int8.compile_decoding()
