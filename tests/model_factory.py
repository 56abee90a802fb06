"""Models built at test time: trained, hand-made, shipped with onnx, and deliberately broken.

Nothing here downloads anything: the digits data set ships with scikit-learn, the light
reference CNNs ship with the onnx package, everything else is built from seeded numbers.
Every builder writes into the directory it is given and returns the paths it wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

__all__ = [
    "broken_models",
    "fp16_overflow_classifier",
    "identity_model",
    "integer_feature_classifier",
    "onnx_reference_models",
    "small_cnn",
    "tiny_tflite",
]

SEED = 0
# onnxruntime 1.32 reads IR version 10; newer onnx writes newer IR versions by default.
IR_VERSION = 10
OPSET = 17


def _model(graph: onnx.GraphProto, opset: int = OPSET) -> ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def small_cnn(directory: Path) -> Path:
    """Conv 3x3 -> Relu -> MaxPool 2x2 -> Gemm -> Softmax on [N, 1, 8, 8], seeded weights."""
    rng = np.random.default_rng(SEED)
    conv_w = rng.normal(0.0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0.0, 0.1, (8,)).astype(np.float32)
    dense_w = rng.normal(0.0, 0.3, (8 * 4 * 4, 10)).astype(np.float32)
    dense_b = rng.normal(0.0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(dense_w, "dense_w"),
            numpy_helper.from_array(dense_b, "dense_b"),
        ],
    )
    path = directory / "small_cnn.onnx"
    onnx.save(_model(graph), path)
    return path


def onnx_reference_models() -> list[Path]:
    """The light reference CNNs the onnx package ships (weights made by ConstantOfShape)."""
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(light.glob("*.onnx"))


def tiny_tflite(directory: Path) -> Path:
    """FULLY_CONNECTED(64->128, relu) -> FULLY_CONNECTED(128->10) -> SOFTMAX, float32 weights.

    Built with LiteRT's flatbuffer object API, no TensorFlow. The weights are large enough
    (8 KiB+) for dynamic-range quantization to apply, and uniform rather than normal: no
    outlier stretches a channel's INT8 step, so the INT8 variant keeps the parent's top-1
    class on standard-normal inputs.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(SEED)
    arrays = {
        "w1": rng.uniform(-0.2, 0.2, (128, 64)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, (128,)).astype(np.float32),
        "w2": rng.uniform(-0.3, 0.3, (10, 128)).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, (10,)).astype(np.float32),
    }
    buffers = [schema.BufferT()]  # buffer 0 is the empty buffer by convention

    def tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.type, t.shape = name, schema.TensorType.FLOAT32, shape
        if data is None:
            t.shapeSignature = [-1, *shape[1:]]
        else:
            buffer = schema.BufferT()
            buffer.data = list(data.tobytes())
            buffers.append(buffer)
            t.buffer = len(buffers) - 1
        return t

    tensors = [
        tensor("input", [1, 64]),
        *(tensor(name, list(arrays[name].shape), arrays[name]) for name in ("w1", "b1")),
        tensor("hidden", [1, 128]),
        *(tensor(name, list(arrays[name].shape), arrays[name]) for name in ("w2", "b2")),
        tensor("logits", [1, 10]),
        tensor("probabilities", [1, 10]),
    ]

    def opcode(code: int) -> schema.OperatorCodeT:
        c = schema.OperatorCodeT()
        c.builtinCode = c.deprecatedBuiltinCode = code
        c.version = 1
        return c

    def operator(code_index: int, ins: list[int], outs: list[int], options: object) -> object:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code_index, ins, outs
        if isinstance(options, schema.FullyConnectedOptionsT):
            op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        else:
            op.builtinOptionsType = schema.BuiltinOptions.SoftmaxOptions
        op.builtinOptions = options
        return op

    hidden_options = schema.FullyConnectedOptionsT()
    hidden_options.fusedActivationFunction = schema.ActivationFunctionType.RELU
    softmax_options = schema.SoftmaxOptionsT()
    softmax_options.beta = 1.0
    subgraph = schema.SubGraphT()
    subgraph.name, subgraph.tensors, subgraph.inputs, subgraph.outputs = "main", tensors, [0], [7]
    subgraph.operators = [
        operator(0, [0, 1, 2], [3], hidden_options),
        operator(0, [3, 4, 5], [6], schema.FullyConnectedOptionsT()),
        operator(1, [6], [7], softmax_options),
    ]
    model = schema.ModelT()
    model.version, model.description = 3, "edgefleet tiny classifier"
    model.operatorCodes = [
        opcode(schema.BuiltinOperator.FULLY_CONNECTED),
        opcode(schema.BuiltinOperator.SOFTMAX),
    ]
    model.subgraphs, model.buffers = [subgraph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = directory / "tiny.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def fp16_overflow_classifier(directory: Path) -> tuple[Path, Path]:
    """Raw sensor readings near 1e5 (above FP16's 65504), standardised, then classified.

    The readings do not fit FP16 (its largest value is 65504) and the converter clamps the
    mean constant, so a plain FP16 conversion loses the classes; the standardising ``Sub``
    must stay in FP32. Labels are the FP32 model's own predictions.
    """
    rng = np.random.default_rng(SEED)
    mean = np.full((1, 6), 101_325.0, dtype=np.float32)
    std = np.full((1, 6), 250.0, dtype=np.float32)
    weights = rng.normal(0.0, 2.0, (6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "pressure",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(mean, "mean"),
            numpy_helper.from_array(std, "std"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    readings = (mean + rng.normal(0.0, 250.0, (200, 6))).astype(np.float32)
    logits = ((readings - mean) / std) @ weights
    model_path = directory / "pressure.onnx"
    npz_path = directory / "pressure-validation.npz"
    onnx.save(_model(graph), model_path)
    np.savez(npz_path, input=readings, labels=logits.argmax(axis=1).astype(np.int64))
    return model_path, npz_path


def identity_model(path: Path, elem_type: int) -> Path:
    """``y = Identity(x)`` on an [N, 3] tensor of ONNX element type ``elem_type``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, ["N", 3])],
        [helper.make_tensor_value_info("y", elem_type, ["N", 3])],
    )
    onnx.save(_model(graph), path)
    return path


def integer_feature_classifier(directory: Path) -> Path:
    """INT64 features cast to float, then MatMul and Softmax.

    The FP16 converter leaves ``Cast(to=FLOAT)`` alone, so the converted MatMul gets an
    FP32 input and FP16 weights and onnxruntime refuses to load it.
    """
    rng = np.random.default_rng(SEED)
    nodes = [
        helper.make_node("Cast", ["input"], ["features"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["features", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "counts",
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(rng.normal(0.0, 1.0, (8, 3)).astype(np.float32), "weights")],
    )
    path = directory / "counts.onnx"
    onnx.save(_model(graph), path)
    return path


def _external_data_model(directory: Path, name: str, location: str) -> Path:
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path = directory / name
    path.write_bytes(model.SerializeToString())
    return path


def _field_offsets(data: bytes) -> dict[int, tuple[int, int]]:
    """Top-level protobuf fields: number -> (offset of the length varint, payload length)."""
    offsets: dict[int, tuple[int, int]] = {}
    position = 0

    def varint() -> int:
        nonlocal position
        value = shift = 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while position < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 2:
            start = position
            length = varint()
            offsets.setdefault(number, (start, length))
            position += length
        else:
            raise ValueError(f"unexpected wire type {wire_type} in a ModelProto")
    return offsets


def broken_models(directory: Path, good_onnx: Path) -> dict[str, Path]:
    """The corpus every ``inspect`` must refuse, by name; see tests/converters for kinds."""
    good = good_onnx.read_bytes()
    model = onnx.load(good_onnx)
    corpus: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        corpus[name.split(".")[0]] = directory / name
        (directory / name).write_bytes(data)

    write("truncated.onnx", good[: len(good) // 2])
    # A flipped high bit in the graph's length prefix: the length now runs past the end.
    graph_length_at, _ = _field_offsets(good)[7]
    flipped = bytearray(good)
    flipped[graph_length_at] ^= 0x40
    write("bitflip_length.onnx", bytes(flipped))
    # A flipped case bit in the first node's op type: "MatMul" becomes "matMul".
    op_type = model.graph.node[0].op_type.encode()
    where = good.index(b"\x22" + bytes([len(op_type)]) + op_type) + 2
    flipped = bytearray(good)
    flipped[where] ^= 0x20
    write("bitflip_op_type.onnx", bytes(flipped))

    huge = ModelProto()
    huge.CopyFrom(model)
    huge.graph.initializer.append(
        TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[2**20, 2**20])
    )
    write("huge_initializer.onnx", huge.SerializeToString())
    huge = ModelProto()
    huge.CopyFrom(model)
    huge.graph.input.append(
        helper.make_tensor_value_info("huge_input", TensorProto.FLOAT, [2**20, 2**20])
    )
    write("huge_input.onnx", huge.SerializeToString())

    # Nothing big is declared, but onnxruntime would fold this constant into 4 TiB.
    shape = numpy_helper.from_array(np.array([2**20, 2**20], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
            helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        "inferred",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [shape],
    )
    write("huge_inferred.onnx", _model(graph).SerializeToString())

    future = ModelProto()
    future.CopyFrom(model)
    for opset in future.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 99
    write("future_opset.onnx", future.SerializeToString())

    corpus["external_parent"] = _external_data_model(
        directory, "external_parent.onnx", "../../etc/passwd"
    )
    corpus["external_absolute"] = _external_data_model(
        directory, "external_absolute.onnx", "/etc/passwd"
    )
    outside = directory.parent / f"{directory.name}-outside.bin"
    outside.write_bytes(bytes(16))
    link = directory / "weights-link.bin"
    link.unlink(missing_ok=True)
    os.symlink(outside, link)
    corpus["external_symlink"] = _external_data_model(directory, "external_symlink.onnx", link.name)

    rng = np.random.default_rng(SEED)
    write("random_bytes.onnx", b"\xff" + rng.bytes(4095))
    write("empty.onnx", b"")
    write("fake.tflite", b"\x00\x00\x00\x00TFL3")
    return corpus


def big_mlp(path: Path, *, target_bytes: int = 300 * 1024 * 1024) -> tuple[Path, str]:
    """An MLP of FP32 square layers weighing about ``target_bytes``; returns it and its SHA-256.

    Input ``x`` [N, 2048], output ``y`` [N, 2048]: each layer is ``tanh(x @ W)`` with a
    2048x2048 weight (16 MiB), so a run is a few milliseconds whatever the size. The
    builder holds the model about twice while serializing it (the test process, not the
    controller or the agent whose memory the tests measure).
    """
    import hashlib

    width = 2048
    layers = max(1, round(target_bytes / (width * width * 4)))
    rng = np.random.default_rng(SEED)
    nodes, inits, previous = [], [], "x"
    for index in range(layers):
        weight = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        product, out = f"p{index}", ("y" if index == layers - 1 else f"h{index}")
        nodes += [
            helper.make_node("MatMul", [previous, f"w{index}"], [product]),
            helper.make_node("Tanh", [product], [out]),
        ]
        previous = out
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        inits,
    )
    data = _model(graph).SerializeToString()
    del inits, graph
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()
