"""The Jinja chat template `mlx-oss convert --to mlx-lm` writes: harmony for mlx-lm and other HF tools.

It renders what `mlx_oss.harmony` renders, token for token (tests/test_mlx_lm_interop.py checks):
system/developer/user/assistant messages, function tools (`tools`, OpenAI's shape) as the developer
message's `functions` namespace with the TypeScript-like parameter types, assistant `tool_calls` as
`functions.NAME` calls (content next to calls is a commentary preamble), `tool` messages as the
result of the call their `tool_call_id` names. Variables: reasoning_effort (default "medium"),
current_date (else strftime_now when the host provides it). An assistant message's `thinking` (or
`reasoning_content`, `reasoning`) is shown only after the last user message, as harmony keeps it.

Parameter schemas: objects, strings (with enum), numbers/integers, booleans, arrays, type lists,
`required`, `nullable`, titles, descriptions, string examples and scalar defaults render exactly;
`oneOf` and list/object defaults are outside this template (`oneOf` renders as `any`).
"""

CHAT_TEMPLATE = r"""
{%- macro ts(s, indent) -%}
  {%- if s.type is defined and s.type is not string and s.type is iterable -%}
    {%- for t in s.type if t is string -%}{{- (" | " if not loop.first else "") + ("number" if t == "integer" else t) -}}{%- endfor -%}
  {%- elif s.type == "object" -%}
    {%- if s.description is defined and s.description is string -%}{{- indent + "// " + s.description + "\n" -}}{%- endif -%}
    {{- "{\n" -}}
    {%- if s.properties is defined and s.properties is mapping -%}
      {%- for key, val in s.properties.items() -%}
        {%- set opt = "" if (s.required is defined and key in s.required) else "?" -%}
        {%- if val.title is defined and val.title is string -%}{{- indent + "// " + val.title + "\n" + indent + "//\n" -}}{%- endif -%}
        {%- if val.description is defined and val.description is string -%}{{- indent + "// " + val.description + "\n" -}}{%- endif -%}
        {%- if val.examples is defined and val.examples is iterable and val.examples | length > 0 -%}
          {{- indent + "// Examples:\n" -}}
          {%- for ex in val.examples if ex is string -%}{{- indent + '// - "' + ex + '"\n' -}}{%- endfor -%}
        {%- endif -%}
        {%- set ty = ts(val, indent + "    ") -%}
        {%- if val.nullable is defined and val.nullable is sameas true and "null" not in ty -%}{%- set ty = ty + " | null" -%}{%- endif -%}
        {{- indent + key + opt + ": " + ty + "," -}}
        {%- if val.default is defined -%}
          {%- set d = val.default -%}
          {%- if d is string -%}{%- set d = d if (val.enum is defined and val.enum | length > 0) else '"' + d + '"' -%}
          {%- elif d is sameas true -%}{%- set d = "true" -%}
          {%- elif d is sameas false -%}{%- set d = "false" -%}
          {%- elif d is none -%}{%- set d = "null" -%}
          {%- else -%}{%- set d = d | string -%}{%- endif -%}
          {{- " // default: " + d -}}
        {%- endif -%}
        {{- "\n" -}}
      {%- endfor -%}
    {%- endif -%}
    {{- indent + "}" -}}
  {%- elif s.type == "string" -%}
    {%- if s.enum is defined and s.enum | select("string") | list | length > 0 -%}
      {%- for v in s.enum if v is string -%}{{- (" | " if not loop.first else "") + '"' + v + '"' -}}{%- endfor -%}
    {%- else -%}{{- "string" -}}{%- endif -%}
  {%- elif s.type == "number" or s.type == "integer" -%}{{- "number" -}}
  {%- elif s.type == "boolean" -%}{{- "boolean" -}}
  {%- elif s.type == "array" -%}
    {%- if s["items"] is defined -%}{{- ts(s["items"], indent) + "[]" -}}{%- else -%}{{- "Array<any>" -}}{%- endif -%}
  {%- else -%}{{- "any" -}}
  {%- endif -%}
{%- endmacro -%}
{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort else "medium" -%}
{%- set tool_list = tools if tools is defined and tools else [] -%}
{%- set fn = namespace(any=false) -%}
{%- for t in tool_list if t.type is not defined or t.type == "function" -%}{%- set fn.any = true -%}{%- endfor -%}
{%- set sys = "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06" -%}
{%- if current_date is defined and current_date -%}{%- set sys = sys + "\nCurrent date: " + current_date -%}
{%- elif strftime_now is defined -%}{%- set sys = sys + "\nCurrent date: " + strftime_now("%Y-%m-%d") -%}{%- endif -%}
{{- "<|start|>system<|message|>" + sys + "\n\nReasoning: " + effort + "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message." -}}
{%- if fn.any -%}{{- "\nCalls to these tools must go to the commentary channel: 'functions'." -}}{%- endif -%}
{{- "<|end|>" -}}
{%- set first = 0 -%}
{%- if fn.any -%}
  {{- "<|start|>developer<|message|>" -}}
  {%- if messages and (messages[0].role == "system" or messages[0].role == "developer") -%}
    {{- "# Instructions\n\n" + messages[0].content + "\n\n" -}}
    {%- set first = 1 -%}
  {%- endif -%}
  {{- "# Tools\n\n## functions\n\nnamespace functions {\n\n" -}}
  {%- for t in tool_list if t.type is not defined or t.type == "function" -%}
    {%- set f = t.function if t.function is defined else t -%}
    {%- if f.description is defined and f.description -%}
      {%- for line in f.description.split("\n") -%}{{- "// " + line + "\n" -}}{%- endfor -%}
    {%- endif -%}
    {%- if f.parameters is defined and f.parameters is not none -%}
      {{- "type " + f.name + " = (_: " + ts(f.parameters, "") + ") => any;\n\n" -}}
    {%- else -%}
      {{- "type " + f.name + " = () => any;\n\n" -}}
    {%- endif -%}
  {%- endfor -%}
  {{- "} // namespace functions<|end|>" -}}
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == "user" -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
  {%- if loop.index0 < first -%}
  {%- elif m.role == "system" or m.role == "developer" -%}
    {{- "<|start|>developer<|message|># Instructions\n\n" + m.content + "<|end|>" -}}
  {%- elif m.role == "user" -%}
    {{- "<|start|>user<|message|>" + m.content + "<|end|>" -}}
  {%- elif m.role == "assistant" -%}
    {%- set thinking = m.thinking if m.thinking is defined and m.thinking else (m.reasoning_content if m.reasoning_content is defined and m.reasoning_content else (m.reasoning if m.reasoning is defined and m.reasoning is string else "")) -%}
    {%- set calls = m.tool_calls if m.tool_calls is defined and m.tool_calls else [] -%}
    {%- if thinking and loop.index0 > ns.last_user -%}
      {{- "<|start|>assistant<|channel|>analysis<|message|>" + thinking + "<|end|>" -}}
    {%- endif -%}
    {%- if m.content and calls -%}
      {{- "<|start|>assistant<|channel|>commentary<|message|>" + m.content + "<|end|>" -}}
    {%- elif m.content -%}
      {{- "<|start|>assistant<|channel|>final<|message|>" + m.content + ("<|return|>" if loop.last and not add_generation_prompt else "<|end|>") -}}
    {%- endif -%}
    {%- for c in calls -%}
      {%- set f = c.function if c.function is defined else c -%}
      {%- set args = f.arguments if f.arguments is string else (f.arguments | tojson) -%}
      {{- "<|start|>assistant to=functions." + f.name + "<|channel|>commentary <|constrain|>json<|message|>" + args + "<|call|>" -}}
    {%- endfor -%}
  {%- elif m.role == "tool" -%}
    {%- set found = namespace(name=m.name if m.name is defined and m.name else "") -%}
    {%- for prev in messages[:loop.index0] if prev.role == "assistant" and prev.tool_calls is defined and prev.tool_calls -%}
      {%- for c in prev.tool_calls if c.id is defined and m.tool_call_id is defined and c.id == m.tool_call_id -%}
        {%- set found.name = (c.function if c.function is defined else c).name -%}
      {%- endfor -%}
    {%- endfor -%}
    {%- if not found.name -%}{{- raise_exception("a tool message needs the tool_call_id of an earlier assistant tool call") -}}{%- endif -%}
    {{- "<|start|>functions." + found.name + " to=assistant<|channel|>commentary<|message|>" + m.content + "<|end|>" -}}
  {%- else -%}
    {{- raise_exception("role " + m.role + " is not supported by this chat template (system, developer, user, assistant, tool)") -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- "<|start|>assistant" -}}{%- endif -%}
"""
