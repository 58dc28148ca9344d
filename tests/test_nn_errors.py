"""Bad input gets torch.nn's exception type and wording: each case runs on torch.nn and on
fusedrnn and the two exceptions are compared."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def _same_error(make_ref, make_ours, call):
    """Both sides raise; same type; same message (torch.nn's wording)."""
    e_ref = _raised(lambda: call(make_ref()))
    e_ours = _raised(lambda: call(make_ours()))
    assert type(e_ours) is type(e_ref), (e_ref, e_ours)
    assert str(e_ours) == str(e_ref)


CTOR_CASES = {
    "dropout_range": ("LSTM", (3, 4), {"num_layers": 2, "dropout": 1.5}),
    "dropout_bool": ("GRU", (3, 4), {"num_layers": 2, "dropout": True}),
    "input_size_zero": ("RNN", (0, 4), {}),
    "hidden_size_zero": ("LSTM", (3, 0), {}),
    "hidden_size_float": ("GRU", (3, 4.0), {}),
    "input_size_float": ("LSTM", (3.0, 4), {}),
    "num_layers_zero": ("GRU", (3, 4, 0), {}),
    "proj_on_rnn": ("RNN", (3, 4), {"proj_size": 2}),
    "proj_on_gru": ("GRU", (3, 4), {"proj_size": 2}),
    "proj_too_big": ("LSTM", (3, 4), {"proj_size": 4}),
    "proj_negative": ("LSTM", (3, 4), {"proj_size": -1}),
    "bad_nonlinearity": ("RNN", (3, 4), {"nonlinearity": "gelu"}),
    "bias_not_bool": ("LSTM", (3, 4), {"bias": 1}),
    "batch_first_not_bool": ("GRU", (3, 4), {"batch_first": "yes"}),
}


@pytest.mark.parametrize("case", list(CTOR_CASES))
def test_constructor_checks(case):
    name, args, kw = CTOR_CASES[case]
    e_ref = _raised(lambda: getattr(torch.nn, name)(*args, **kw))
    e_ours = _raised(lambda: getattr(fusedrnn, name)(*args, **kw))
    assert type(e_ours) is type(e_ref) and str(e_ours) == str(e_ref)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fusedrnn.LSTM(3, 4, dropout=0.5)


def test_unknown_cell_nonlinearity_at_forward():
    ref, ours = torch.nn.RNNCell(3, 4, nonlinearity="gelu"), fusedrnn.RNNCell(3, 4, nonlinearity="gelu")
    _same_error(lambda: ref, lambda: ours, lambda m: m(torch.randn(2, 3)))


def _pair(kind, *args, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(*args, **kw)
    ours = getattr(fusedrnn, kind)(*args, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _lstm_hx(L, B, H, P=None):
    return (torch.zeros(L, B, P or H), torch.zeros(L, B, H))


FORWARD_CASES = {
    # (kind, ctor args, ctor kwargs, call(m))
    "rnn_wrong_feature": ("RNN", (3, 4), {}, lambda m: m(torch.randn(5, 2, 7))),
    "lstm_wrong_feature": ("LSTM", (3, 4), {}, lambda m: m(torch.randn(5, 2, 7))),
    "gru_wrong_feature_unbatched": ("GRU", (3, 4), {}, lambda m: m(torch.randn(5, 7))),
    "rnn_4d": ("RNN", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3, 1))),
    "lstm_4d": ("LSTM", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3, 1))),
    "gru_1d": ("GRU", (3, 4), {}, lambda m: m(torch.randn(3))),
    "rnn_hx_batch": ("RNN", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 3, 4))),
    "gru_hx_layers": ("GRU", (3, 4, 2), {}, lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))),
    "gru_hx_size": ("GRU", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 5))),
    "gru_hx_bidir_layers": ("GRU", (3, 4), {"bidirectional": True},
                            lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))),
    "lstm_h_batch": ("LSTM", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3), _lstm_hx(1, 3, 4))),
    "lstm_c_size": ("LSTM", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3),
                                                    (torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)))),
    "lstm_proj_h_size": ("LSTM", (3, 4), {"proj_size": 2},
                         lambda m: m(torch.randn(5, 2, 3), _lstm_hx(1, 2, 4))),
    "rnn_batched_input_unbatched_hx": ("RNN", (3, 4), {},
                                       lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 4))),
    "gru_unbatched_input_batched_hx": ("GRU", (3, 4), {},
                                       lambda m: m(torch.randn(5, 3), torch.zeros(1, 1, 4))),
    "lstm_batched_input_unbatched_hx": ("LSTM", (3, 4), {},
                                        lambda m: m(torch.randn(5, 2, 3),
                                                    (torch.zeros(1, 4), torch.zeros(1, 4)))),
    "lstm_unbatched_input_batched_hx": ("LSTM", (3, 4), {},
                                        lambda m: m(torch.randn(5, 3), _lstm_hx(1, 1, 4))),
    "rnn_seq_len_zero": ("RNN", (3, 4), {}, lambda m: m(torch.randn(0, 2, 3))),
    "lstm_seq_len_zero_bf": ("LSTM", (3, 4), {"batch_first": True},
                             lambda m: m(torch.randn(2, 0, 3))),
    "gru_seq_len_zero_unbatched": ("GRU", (3, 4), {}, lambda m: m(torch.randn(0, 3))),
    "lstm_dtype": ("LSTM", (3, 4), {}, lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64))),
    "gru_dtype_packed": ("GRU", (3, 4), {}, lambda m: m(pack_padded_sequence(
        torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([5, 3])))),
    "rnn_packed_hx_batch": ("RNN", (3, 4), {}, lambda m: m(pack_padded_sequence(
        torch.randn(5, 2, 3), torch.tensor([5, 3])), torch.zeros(1, 3, 4))),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_errors_match_torch(case):
    kind, args, kw, call = FORWARD_CASES[case]
    ref, ours = _pair(kind, *args, **kw)
    _same_error(lambda: ref, lambda: ours, call)


CELL_CASES = {
    "rnncell_3d": ("RNNCell", lambda m: m(torch.randn(2, 3, 1))),
    "lstmcell_3d": ("LSTMCell", lambda m: m(torch.randn(2, 3, 1))),
    "grucell_hx_3d": ("GRUCell", lambda m: m(torch.randn(2, 3), torch.zeros(1, 2, 4))),
    "lstmcell_hx_3d": ("LSTMCell", lambda m: m(torch.randn(2, 3),
                                               (torch.zeros(2, 4), torch.zeros(1, 2, 4)))),
    "rnncell_feature": ("RNNCell", lambda m: m(torch.randn(2, 5))),
    "lstmcell_feature": ("LSTMCell", lambda m: m(torch.randn(2, 5))),
    "grucell_hx_batch": ("GRUCell", lambda m: m(torch.randn(2, 3), torch.zeros(3, 4))),
    "lstmcell_h_size": ("LSTMCell", lambda m: m(torch.randn(2, 3),
                                                (torch.zeros(2, 5), torch.zeros(2, 4)))),
    "lstmcell_c_size": ("LSTMCell", lambda m: m(torch.randn(2, 3),
                                                (torch.zeros(2, 4), torch.zeros(2, 5)))),
    "grucell_unbatched_hx_batched": ("GRUCell", lambda m: m(torch.randn(3), torch.zeros(2, 4))),
}


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_errors_match_torch(case):
    kind, call = CELL_CASES[case]
    ref, ours = _pair(kind, 3, 4)
    _same_error(lambda: ref, lambda: ours, call)


def test_cell_dtype_mismatch_is_runtime_error():
    ref, ours = _pair("LSTMCell", 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64)
    assert type(_raised(lambda: ours(x))) is type(_raised(lambda: ref(x)))
    with pytest.raises(RuntimeError, match="expected input dtype torch.float32.*got torch.float64"):
        ours(x)


def test_op_contract_errors_name_the_argument():
    xw = torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2\)"):
        fusedrnn.recurrence("LSTM", xw, torch.randn(8, 2), None, torch.zeros(3, 2),
                            backend="reference")
    with pytest.raises(ValueError, match="mode must be one of"):
        fusedrnn.recurrence("LSTMX", xw, torch.randn(8, 2), None, torch.zeros(2, 2),
                            backend="reference")
    with pytest.raises(ValueError, match="lengths must be int64"):
        fusedrnn.recurrence("GRU", torch.randn(3, 2, 6), torch.randn(6, 2), None,
                            torch.zeros(2, 2), lengths=torch.tensor([3, 1], dtype=torch.int32),
                            backend="reference")
