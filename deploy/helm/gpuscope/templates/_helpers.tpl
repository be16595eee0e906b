{{/* Labels on every object; the selector uses the first two only, so upgrades keep matching. */}}
{{- define "gpuscope.selectorLabels" -}}
app.kubernetes.io/name: gpuscope
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpuscope.labels" -}}
{{ include "gpuscope.selectorLabels" . }}
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
