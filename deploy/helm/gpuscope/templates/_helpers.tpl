{{/* Labels on every object; the selector uses the first two only, so upgrades keep matching. */}}
{{- define "gpuscope.selectorLabels" -}}
app.kubernetes.io/name: gpuscope
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpuscope.labels" -}}
{{ include "gpuscope.selectorLabels" . }}
{{ include "gpuscope.commonLabels" . }}
{{- end }}

{{- define "gpuscope.commonLabels" -}}
app.kubernetes.io/part-of: gpuscope
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The pod-resources socket and debugfs are root-only, and Kubernetes gives a non-root process no
    capability (no ambient capabilities): any of them runs the container as uid 0. */}}
{{- define "gpuscope.uid" -}}
{{- if or .Values.podResources.enabled .Values.lustre.debugfs .Values.kernelLog.enabled -}}0{{- else -}}65534{{- end -}}
{{- end }}

{{/* The remediation receiver's labels: its own name, so neither selects the other's pods. */}}
{{- define "gpuscope.remediate.selectorLabels" -}}
app.kubernetes.io/name: gpuscope-remediate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpuscope.remediate.labels" -}}
{{ include "gpuscope.remediate.selectorLabels" . }}
app.kubernetes.io/component: remediate
{{ include "gpuscope.commonLabels" . }}
{{- end }}

{{- define "gpuscope.remediate.tokenSecret" -}}
{{- .Values.remediate.tokenSecret | default (printf "%s-remediate-token" .Release.Name) -}}
{{- end }}

{{/* The policy file: the values' fields, and what the chart decides (Kubernetes, in-cluster through
    the pod's service account, the audit log and state on the volume). */}}
{{- define "gpuscope.remediate.policy" -}}
{{- $account := "/var/run/secrets/kubernetes.io/serviceaccount" -}}
{{- $fixed := dict "scheduler" "kubernetes" "audit_log" "/var/lib/gpuscope/remediate.jsonl"
                   "state_file" "/var/lib/gpuscope/remediate.json"
                   "kubernetes" (dict "api" "" "token_file" (printf "%s/token" $account)
                                      "ca_file" (printf "%s/ca.crt" $account)) -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.remediate.policy) $fixed) -}}
{{- end }}
