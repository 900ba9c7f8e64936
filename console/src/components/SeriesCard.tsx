// Which study and series the verdict was computed on (issue 20.1/20.2): the identifiers a
// reader checks against the PACS, why the other series of the upload were not read, and a
// warning when one image of a longer series was sent.
import { Alert, Descriptions, Table, Typography } from 'antd';
import type { components } from '../api/schema';
import { studyDate } from '../lib/worklist';

type Series = components['schemas']['SeriesOut'];

export function SeriesCard({ series }: { series: Series }) {
  const others = (series.candidates ?? []).filter((c) => c.not_used_because || c.excluded);
  return (
    <div data-testid="series-card">
      {series.single_slice_of_series && (
        <Alert
          type="warning"
          showIcon
          role="alert"
          data-testid="single-slice-warning"
          style={{ marginBottom: 12 }}
          title="One image of a longer series"
          description={series.single_slice_note ?? 'Only one image of this series was sent: the verdict rests on it alone.'}
        />
      )}
      <Descriptions column={{ xs: 1, md: 2 }} bordered size="small">
        <Descriptions.Item label="Patient">{series.patient_id ?? '–'}</Descriptions.Item>
        <Descriptions.Item label="Accession number">{series.accession_number ?? '–'}</Descriptions.Item>
        <Descriptions.Item label="Study date">{studyDate(series.study_date) || '–'}</Descriptions.Item>
        <Descriptions.Item label="Series description">{series.series_description ?? '–'}</Descriptions.Item>
        <Descriptions.Item label="Slice thickness">
          {series.slice_thickness_mm != null ? `${series.slice_thickness_mm} mm` : '–'}
        </Descriptions.Item>
        <Descriptions.Item label="Images read">{series.instances ?? series.slices ?? '–'}</Descriptions.Item>
        <Descriptions.Item label="StudyInstanceUID" span={2}>
          <span data-testid="study-uid">{series.study_instance_uid ?? '–'}</span>
        </Descriptions.Item>
        <Descriptions.Item label="SeriesInstanceUID" span={2}>
          <span data-testid="series-uid">{series.series_instance_uid ?? '–'}</span>
        </Descriptions.Item>
        {series.reason && (
          <Descriptions.Item label="Why this series" span={2}>
            {series.reason}
          </Descriptions.Item>
        )}
      </Descriptions>
      {others.length > 0 && (
        <>
          <Typography.Paragraph style={{ margin: '12px 0 4px' }}>Other series in the upload, not read:</Typography.Paragraph>
          <Table
            size="small"
            rowKey="uid"
            pagination={false}
            dataSource={others}
            columns={[
              { title: 'Series', dataIndex: 'description', key: 'd' },
              { title: 'Modality', dataIndex: 'modality', key: 'm' },
              { title: 'Images', dataIndex: 'slices', key: 's' },
              { title: 'Not read because', key: 'why', render: (_: unknown, c: (typeof others)[number]) => c.excluded ?? c.not_used_because },
            ]}
          />
        </>
      )}
    </div>
  );
}
