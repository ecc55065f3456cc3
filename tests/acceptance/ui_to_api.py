"""Convert a UI-format ComfyUI workflow (what the editor saves) to the API prompt the frontend queues.

The server never converts; the browser does (`graphToPrompt` in ComfyUI_frontend). This module
reproduces what that does for the graphs this pack ships, using the server's `/object_info` to
know which inputs are widgets:

- `widgets_values` is positional over the node's widgets in creation order: the widget inputs of
  `required` then `optional`, in schema order. Frontend-only widgets hold a slot too and are not
  sent: after an INT with `control_after_generate` (or named `seed`/`noise_seed`) comes its
  "control after generate" value; after a COMBO with `control_after_generate` come that value and
  a filter string; a media combo (`image_upload`/`video_upload`/`animated_image_upload`) adds an
  "upload" button widget at the end of the required widgets.
- A linked input (a socket, or a widget turned into an input) becomes `[source node id, slot]`;
  links are followed through `Reroute` nodes and through bypassed nodes (mode 4, the output passes
  the first input of the same type); links from muted nodes (mode 2) are dropped.
- Muted and bypassed nodes and frontend-only nodes (Note, MarkdownNote, Reroute) are not sent.
- A dynamic combo (0.33.0's `COMFY_DYNAMICCOMBO_V3`, e.g. SaveVideo's format -> codec) is a widget
  whose selected option adds its own widgets right after it; they are sent as dotted keys
  (`format.codec`), which the server expands.
- A workflow saved by an older host has fewer `widgets_values` when a node gained widgets at its
  end since (0.33.0's CreateVideo added `bit_depth`): as the frontend does, those trailing widgets
  take their defaults. Any other mismatch (more values than widgets, or a missing value with no
  default) means the saved values would be shifted, and is refused.

Anything the example workflows do not use and this module cannot do faithfully (subgraphs, group
nodes, PrimitiveNode, audio upload widgets) raises `ConversionError` rather than guessing.
"""
from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
SEED_NAMES = {"seed", "noise_seed"}
MODE_MUTED = 2
MODE_BYPASS = 4
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute"}
UNSUPPORTED_NODES = {"PrimitiveNode"}  # a frontend-only node that writes into other widgets
MEDIA_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


class ConversionError(ValueError):
    pass


def widget_slots(node_def: dict, prefix: str = "") -> list[tuple]:
    """The node's widgets in creation order as (kind, input name, spec): kind is "value" for a
    widget sent to the server, "frontend" for a frontend-only widget that still holds a slot, and
    "dynamic" for a dynamic combo (0.33.0's `COMFY_DYNAMICCOMBO_V3`), whose selected option adds
    its own widgets right after it, named `<combo>.<input>` (the server expands those dotted keys).
    Hidden inputs have no widget."""
    slots: list[tuple] = []
    upload_after_required = False
    inputs = node_def.get("input", {})
    order = node_def.get("input_order", {})
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        for name in order.get(section) or list(specs):
            spec = specs[name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if opts.get("hidden"):
                continue
            if kind == DYNAMIC_COMBO:
                slots.append(("dynamic", prefix + name, spec))
                continue
            is_combo = isinstance(kind, list) or kind == "COMBO"
            if not (is_combo or kind in WIDGET_TYPES) or opts.get("forceInput"):
                continue  # a socket, not a widget
            if opts.get("audio_upload"):
                raise ConversionError(f"{node_def.get('name')}.{name}: audio upload widgets are not supported")
            slots.append(("value", prefix + name, spec))
            if kind == "INT" and opts.get("control_after_generate", name in SEED_NAMES):
                slots.append(("frontend", f"{prefix}{name}:control_after_generate", None))
            elif is_combo and opts.get("control_after_generate"):
                slots.append(("frontend", f"{prefix}{name}:control_after_generate", None))
                slots.append(("frontend", f"{prefix}{name}:control_filter_list", None))
            if section == "required" and is_combo and any(opts.get(f) for f in MEDIA_UPLOAD_FLAGS):
                upload_after_required = True
        if section == "required" and upload_after_required:
            slots.append(("frontend", prefix + "upload", None))
    return slots


def assign_widgets(node_def: dict, values: list, where: str) -> dict[str, Any]:
    """Widget values by input name, walking the widgets in creation order (dynamic combos open
    their selected option's widgets as they go). A workflow saved before a node gained widgets at
    its end lacks their values: they take their defaults, as the frontend fills them. More values
    than widgets, a missing value with no default, or an unknown dynamic option is refused."""
    slots = widget_slots(node_def)
    out: dict[str, Any] = {}
    k = 0
    while k < len(slots):
        kind, name, spec = slots[k]
        if k < len(values):
            value = values[k]
        elif kind == "frontend":
            value = None
        else:
            value = _default(spec)
            if value is _NO_DEFAULT:
                raise ConversionError(f"{where}: {len(values)} widgets_values, but widget {name!r} (slot {k}) has "
                                      "no value and no default; the workflow does not match this server's node definition")
        if kind == "value":
            out[name] = {"__value__": value} if isinstance(value, list) else value
        elif kind == "dynamic":
            out[name] = value
            option = next((o for o in spec[1].get("options", []) if o.get("key") == value), None)
            if option is None:
                raise ConversionError(f"{where}: {value!r} is not an option of {name!r}")
            slots[k + 1:k + 1] = widget_slots({"input": option.get("inputs") or {}}, prefix=name + ".")
        k += 1
    if len(values) > len(slots):
        raise ConversionError(
            f"{where}: {len(values)} widgets_values for {len(slots)} widget slots {[n for _, n, _ in slots]}; "
            "the workflow does not match this server's node definition")
    return out


_NO_DEFAULT = object()


def _default(spec: list) -> Any:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(spec[0], list) and spec[0]:
        return spec[0][0]
    if spec[0] == "COMBO" and opts.get("options"):
        return opts["options"][0]
    if spec[0] == DYNAMIC_COMBO and opts.get("options"):
        return opts["options"][0]["key"]
    return _NO_DEFAULT


def _links_by_id(workflow: dict) -> dict[int, tuple[int, int, int, int]]:
    """link id -> (from node, from slot, to node, to slot); accepts list and object forms."""
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            out[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]),
                                    int(link["target_id"]), int(link["target_slot"]))
        else:
            out[int(link[0])] = (int(link[1]), int(link[2]), int(link[3]), int(link[4]))
    return out


def convert(workflow: dict, object_info: dict) -> dict[str, dict[str, Any]]:
    """Return the API prompt (`{node id: {"class_type", "inputs", "_meta"}}`) for a UI workflow."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise ConversionError("subgraphs are not supported")
    if (workflow.get("extra") or {}).get("groupNodes"):
        raise ConversionError("group nodes are not supported")
    nodes = {int(n["id"]): n for n in workflow.get("nodes") or []}
    links = _links_by_id(workflow)

    def output_type(node: dict, slot: int) -> str | None:
        outs = node.get("outputs") or []
        return outs[slot].get("type") if slot < len(outs) else None

    def resolve(link_id: int, seen: frozenset = frozenset()) -> tuple[str, int] | None:
        """Follow a link back to the node that produces the value; None when it is cut."""
        if link_id not in links:
            raise ConversionError(f"link {link_id} is not in the workflow's links")
        src_id, src_slot, _, _ = links[link_id]
        if src_id in seen:
            raise ConversionError(f"link cycle through node {src_id}")
        src = nodes.get(src_id)
        if src is None:
            raise ConversionError(f"link {link_id} starts at missing node {src_id}")
        if src["type"] == "Reroute":
            upstream = (src.get("inputs") or [{}])[0].get("link")
            return None if upstream is None else resolve(upstream, seen | {src_id})
        mode = src.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            want = output_type(src, src_slot)
            candidates = src.get("inputs") or []
            # the frontend prefers the input at the same index, then the first of the same type
            ordered = ([candidates[src_slot]] if src_slot < len(candidates) else []) + list(candidates)
            for inp in ordered:
                if inp.get("link") is not None and inp.get("type") == want:
                    return resolve(inp["link"], seen | {src_id})
            return None
        return str(src_id), src_slot

    prompt: dict[str, dict[str, Any]] = {}
    for node_id, node in sorted(nodes.items()):
        ntype = node["type"]
        if ntype in VIRTUAL_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        if ntype in UNSUPPORTED_NODES:
            raise ConversionError(f"node {node_id}: {ntype} is not supported")
        node_def = object_info.get(ntype)
        if node_def is None:
            raise ConversionError(f"node {node_id}: type {ntype!r} is not registered on the server")
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):  # some packs save widgets by name
            for kind, name, _ in widget_slots(node_def):
                if kind == "value" and name in values:
                    inputs[name] = values[name]
        elif values:
            inputs.update(assign_widgets(node_def, list(values), f"node {node_id} ({ntype})"))
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            source = resolve(inp["link"], frozenset({node_id}))
            if source is None:
                inputs.pop(inp["name"], None)
            else:
                inputs[inp["name"]] = [source[0], source[1]]
        entry = {"inputs": inputs, "class_type": ntype}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        else:
            entry["_meta"] = {"title": node_def.get("display_name") or ntype}
        prompt[str(node_id)] = entry
    # inputs linked to nodes that are not sent (the frontend drops them the same way)
    for entry in prompt.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt
